"""The `# Copied from` copies in pipelines/ equal their originals, and utils/check_copies.py notices when one
does not and rewrites it with --fix."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "utils" / "check_copies.py"
ORIGINAL = "hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline.save_pretrained"


def check_copies(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True, text=True)


def test_the_pipeline_copies_equal_their_originals():
    result = check_copies()
    assert result.returncode == 0, result.stdout + result.stderr
    marked = sum(f.read_text().count("# Copied from ") for f in (REPO / "pipelines").glob("*.py"))
    assert marked >= 10  # the convention is in use: a checker that finds no marker would pass vacuously


def test_a_changed_copy_is_reported_and_fix_restores_it(tmp_path):
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    copy = tmp_path / "pipelines" / "latent_ddpm.py"
    lines = copy.read_text().splitlines(keepends=True)
    marker = lines.index(f"    # Copied from {ORIGINAL}\n")
    changed = next(i for i in range(marker, len(lines)) if "indent=2" in lines[i])
    lines[changed] = lines[changed].replace("indent=2", "indent=4")
    copy.write_text("".join(lines))

    result = check_copies("--root", tmp_path)
    assert result.returncode == 1
    assert f"pipelines/latent_ddpm.py:{marker + 2}: differs from {ORIGINAL}" in result.stdout
    assert "1 of " in result.stdout and "make fix-copies" in result.stdout

    fixed = check_copies("--root", tmp_path, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"pipelines/latent_ddpm.py:{marker + 2}: rewritten from {ORIGINAL}" in fixed.stdout
    assert copy.read_bytes() == (REPO / "pipelines" / "latent_ddpm.py").read_bytes()
    assert check_copies("--root", tmp_path).returncode == 0


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / "pipelines" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_renames_indentation_and_bad_markers(tmp_path):
    write(
        tmp_path,
        "pixel.py",
        """
        class PixelPipeline:
            @property
            def scale(self):
                return 2

            def decode(self, image):
                # Images are decoded at twice the scale.
                return image * self.scale
        """,
    )
    copy = write(
        tmp_path,
        "latent.py",
        """
        # Copied from hf_ddpm.pipelines.pixel.PixelPipeline.decode with image->latents
        def decode(self, latents):
            # Images are decoded at twice the scale.
            return latents * self.scale


        class LatentPipeline:
            # Copied from hf_ddpm.pipelines.pixel.PixelPipeline.scale
            @property
            def scale(self):
                return 3
        """,
    )
    result = check_copies("--root", tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "pipelines/latent.py:10: differs from hf_ddpm.pipelines.pixel.PixelPipeline.scale"
    )
    assert check_copies("--root", tmp_path, "--fix").returncode == 0
    assert "return 3" not in copy.read_text() and "        return 2\n" in copy.read_text()

    write(
        tmp_path,
        "broken.py",
        """
        # Copied from hf_ddpm.pipelines.pixel.PixelPipeline.encode
        def encode(self, image):
            return image

        # Copied from hf_ddpm.pipelines.pixel.PixelPipeline.decode

        def decode(self, image):
            return image
        """,
    )
    result = check_copies("--root", tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "pipelines/broken.py:2: hf_ddpm.pipelines.pixel.PixelPipeline.encode: pipelines/pixel.py defines no "
        "encode there",
        "pipelines/broken.py:6: `# Copied from` must stand right above a def or class or its decorators",
    ]
