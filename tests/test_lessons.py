"""The notebooks build what they teach: their #@save cells and the lesson modules agree, and the
package keeps its two tiers (lesson code generated from the notebooks; tooling in tlhelpers/tools)."""
import ast
import json
import shutil
from pathlib import Path

import pytest

from tlhelpers.tools import nbexport

ROOT = Path(__file__).resolve().parent.parent

#: What each notebook must define in its own #@save cells (the lesson of that notebook).
TAUGHT = {
    "02_custom_dataset_and_transforms": {"parse_breed", "PetsDataset", "denormalize", "show_batch",
                                         "train_transforms", "eval_transforms"},
    "03_train_validation_split": {"random_split_indices", "stratified_split_indices", "make_pets_splits",
                                  "make_loaders"},
    "04_modify_pretrained_resnet34": {"create_model", "freeze_backbone", "unfreeze", "keep_bn_statistics"},
    "05_gpu_utils_and_training_loop": {"get_default_device", "to_device", "DeviceDataLoader",
                                       "ImageClassificationBase", "accuracy", "evaluate", "fit",
                                       "PretrainedClassifier"},
    "06_fine_tuning_one_cycle": {"fit_one_cycle", "stage_param_groups", "FineTuneConfig", "Phase", "fine_tune"},
    "08_interpret_and_predict": {"top_losses", "most_confused", "grad_cam"},
    "10_training_on_several_gpus": {"setup_distributed", "cleanup_distributed", "rank_and_world_size",
                                    "distributed_loaders", "DistributedClassifier", "all_succeeded", "gather_tensors"},
}


def _defined_names(source: str) -> set[str]:
    return {node.name for node in ast.parse(source).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def test_lesson_modules_agree_with_their_notebooks():
    assert nbexport.differences() == [], "run: python -m tlhelpers.tools.nbexport"


@pytest.mark.parametrize("notebook", sorted(TAUGHT))
def test_each_notebook_defines_its_lesson_code_in_cells(notebook):
    cells = nbexport.saved_cells(ROOT / "notebooks" / f"{notebook}.ipynb")
    defined = set().union(*(_defined_names(cell) for cell in cells))
    assert TAUGHT[notebook] <= defined, f"{notebook} does not define {sorted(TAUGHT[notebook] - defined)}"


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    (root / "tlhelpers").mkdir(parents=True)
    for module in nbexport.LESSON_MODULES:
        shutil.copy(ROOT / "tlhelpers" / f"{module}.py", root / "tlhelpers" / f"{module}.py")
    return root


def test_editing_a_notebook_alone_is_detected(tmp_path):
    root = _copy_tree(tmp_path)
    assert nbexport.differences(root) == []
    path = root / "notebooks" / "05_gpu_utils_and_training_loop.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "".join(c["source"]).startswith("#@save\ndef fit("))
    cell["source"] = "".join(cell["source"]).replace("optimizer.zero_grad()", "optimizer.zero_grad(set_to_none=True)")
    path.write_text(json.dumps(nb))
    assert nbexport.differences(root) == ["tlhelpers/training.py"]
    nbexport.export(root)  # the export brings the module in line again
    assert nbexport.differences(root) == []
    assert "zero_grad(set_to_none=True)" in (root / "tlhelpers" / "training.py").read_text()


def test_editing_a_module_alone_is_detected(tmp_path):
    root = _copy_tree(tmp_path)
    module = root / "tlhelpers" / "pets.py"
    module.write_text(module.read_text().replace("scale=(0.35, 1.0)", "scale=(0.5, 1.0)"))
    assert nbexport.differences(root) == ["tlhelpers/pets.py"]


def test_no_notebook_prints_source_instead_of_teaching_it():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert "getsource" not in code, f"{path.name} prints source code with inspect.getsource"


def _lines(paths) -> int:
    return sum(len(p.read_text().splitlines()) for p in paths)


def test_the_lesson_tier_stays_small():
    lesson = [ROOT / "tlhelpers" / f"{module}.py" for module in nbexport.LESSON_MODULES]
    assert _lines(lesson) <= 1100, f"the lesson tier has {_lines(lesson)} lines; keep it readable in an afternoon"
    top_level = {p.stem for p in (ROOT / "tlhelpers").glob("*.py")}
    assert top_level == set(nbexport.LESSON_MODULES) | {"__init__", "config"}, \
        "only lesson modules and config live at the top of tlhelpers/; tooling goes into tlhelpers/tools/"


def _environment_reads(source: str, name: str) -> list[str]:
    """Lines of ``source`` that read an environment variable (writing one, or copying all for a child, is fine)."""
    tree = ast.parse(source)
    reads = []
    for node in ast.walk(tree):
        is_getenv = isinstance(node, ast.Attribute) and node.attr == "getenv"
        is_read = (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                   and isinstance(node.value, ast.Attribute) and node.value.attr == "environ")
        is_get = (isinstance(node, ast.Attribute) and node.attr in ("get", "setdefault", "pop")
                  and isinstance(node.value, ast.Attribute) and node.value.attr == "environ")
        if is_getenv or is_read or is_get:
            reads.append(f"{name}:{node.lineno}")
    return sorted(reads, key=lambda line: int(line.rsplit(":", 1)[1]))


def test_only_config_reads_the_environment():
    reads = [line for path in sorted((ROOT / "tlhelpers").rglob("*.py")) if path.name != "config.py"
             for line in _environment_reads(path.read_text(), str(path.relative_to(ROOT)))]
    assert reads == [], f"read the switch in tlhelpers/config.py and pass it on instead: {reads}"


def test_the_environment_check_can_fail():
    source = "import os\nquick = os.environ.get('TLH_QUICK')\nx = os.environ['X']\ny = os.getenv('Y')\n"
    assert _environment_reads(source, "bad.py") == ["bad.py:2", "bad.py:3", "bad.py:4"]
    assert _environment_reads("import os\nos.environ['X'] = '1'\nenv = dict(os.environ)\n", "ok.py") == []
