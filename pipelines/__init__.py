"""Optional pipelines, one self-contained file each (torch and diffusers only), installed as
`hf_ddpm.pipelines`: every file can be copied beside a checkpoint and loaded by stock diffusers."""
