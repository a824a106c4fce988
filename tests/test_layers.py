"""The package's shape: every import points down the layers below (the README's "How it fits" picture), and
writing training data imports no grader. Imports under ``if __name__ == "__main__":`` (the ``python -m``
shims that call ``metastone.cli.main``) are the only allowed upward arrows."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# bottom first; a unit may import its own layer and the ones below it
LAYERS = [
    {"sampling", "records", "devices", "assets"},
    {"sprm"},
    {"sandbox"},
    {"eval"},
    {"metrics"},
    {"serve.scoring", "serve.worker_thread"},
    {"serve.step_scores", "serve.hf"},
    {"serve.vllm"},
    {"serve.http"},
    {"engines"},
    {"search"},
    {"harness"},
    {"fit"},
    {"data"},
    {"assets.tiny"},  # tiny test models: their prompts are the training data's
    {"train", "export"},
    {"cli"},
]
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "metastone" or len(parts) < 2:
        return None
    if parts[1] in ("serve", "assets") and len(parts) >= 3 and f"{parts[1]}.{parts[2]}" in LEVEL:
        return f"{parts[1]}.{parts[2]}"
    return parts[1]


def shim_lines(tree) -> set[int]:
    """Line numbers inside ``if __name__ == "__main__":`` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
                isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__":
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def imports(path: Path):
    tree = ast.parse(path.read_text())
    skip = shim_lines(tree)
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # "from metastone.serve import vllm" names a module; "from x import f" a name in x
                yield node.lineno, f"{node.module}.{alias.name}" if unit_of(f"{node.module}.{alias.name}") else node.module


def test_every_import_points_down():
    upward, unknown = [], set()
    for path in sorted((ROOT / "metastone").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path.name == "__main__.py":
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        src = unit_of(module)
        if src is None:
            continue
        for line, name in imports(path):
            dst = unit_of(name)
            if dst is None or dst == src:
                continue
            if src not in LEVEL or dst not in LEVEL:
                unknown.add(src if src not in LEVEL else dst)
                continue
            if LEVEL[dst] > LEVEL[src]:
                upward.append(f"{rel}:{line} {src} -> {dst}")
    assert not unknown, f"units missing from LAYERS (add each where it belongs): {sorted(unknown)}"
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_writing_training_data_imports_no_grader():
    code = ("import sys; from metastone.data.prepare import demo_rows; demo_rows('test', limit=1); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('metastone', 'math_verify')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    graders = [m for m in loaded if m.startswith(("metastone.eval.tasks", "metastone.sandbox", "math_verify"))
               or m.endswith("_grader")]
    assert not graders, f"metastone.data.prepare loaded graders: {graders}"
    assert "metastone.eval.demo_task" in loaded
