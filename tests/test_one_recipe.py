"""One fine-tuning recipe: notebook 06 and ``python -m tlhelpers.tools.train_folder`` build the same
optimizer parameter groups for the same settings, because both go through ``FineTuneConfig``."""
import json
from pathlib import Path

import torch

from tlhelpers.finetune import FineTuneConfig, Phase, stage_param_groups
from tlhelpers.tools import train_folder
from tlhelpers.training import PretrainedClassifier

ROOT = Path(__file__).resolve().parent.parent
NB06 = ROOT / "notebooks" / "06_fine_tuning_one_cycle.ipynb"


def _notebook_recipe(max_lr: float) -> FineTuneConfig:
    """Run notebook 06's settings cell and its recipe cell (quick mode) and return its ``recipe``."""
    cells = ["".join(c["source"]) for c in json.loads(NB06.read_text())["cells"] if c["cell_type"] == "code"]
    settings = next(c for c in cells if c.startswith("backbone = "))
    recipe = next(c for c in cells if c.startswith("recipe = FineTuneConfig("))
    namespace = {"QUICK": True, "torch": torch, "FineTuneConfig": FineTuneConfig, "Phase": Phase,
                 "max_lr": max_lr, "device": torch.device("cpu")}
    exec(settings, namespace)
    exec(recipe.split("\n\n")[0], namespace)  # the config only, not the training run below it
    return namespace["recipe"]


def _groups(cfg: FineTuneConfig):
    """Per phase: the optimizer the recipe builds, as comparable values (names, rates, parameters, settings)."""
    torch.manual_seed(0)
    model = PretrainedClassifier("efficientnet_lite0", 5, pretrained=False)
    params = {id(p): name for name, p in model.named_parameters()}
    out = []
    for phase in cfg.phases:
        model.unfreeze(phase.unfreeze)
        groups = stage_param_groups(model, phase.max_lr, cfg.lr_ratio)
        optimizer = cfg.opt_func(groups, phase.max_lr, weight_decay=cfg.weight_decay)
        out.append([(g["name"], round(g["lr"], 12), g["weight_decay"], type(optimizer).__name__,
                     tuple(params[id(p)] for p in g["params"])) for g in optimizer.param_groups])
    return out, cfg.grad_clip


def test_command_line_and_notebook_06_build_the_same_parameter_groups(tmp_path):
    max_lr = 5e-3
    notebook = _notebook_recipe(max_lr)
    first, second = notebook.phases
    args = train_folder.build_parser().parse_args([
        str(tmp_path), "--out", str(tmp_path / "m.pt"), "--frozen-epochs", str(first.epochs),
        "--epochs", str(second.epochs), "--lr", str(first.max_lr), "--finetune-lr", str(second.max_lr),
        "--min-steps", "0"])
    command_line = train_folder.config_from_args(args)
    assert _groups(command_line) == _groups(notebook)
    assert len(_groups(notebook)[0][1]) > 5  # phase 2 really has one group per stage


def test_the_comparison_can_fail(tmp_path):
    notebook = _notebook_recipe(5e-3)
    other = FineTuneConfig(notebook.phases, lr_ratio=10, weight_decay=notebook.weight_decay)
    assert _groups(other) != _groups(notebook)


def test_command_line_defaults_are_the_recipe_defaults(tmp_path):
    args = train_folder.build_parser().parse_args([str(tmp_path), "--out", str(tmp_path / "m.pt")])
    cfg, default = train_folder.config_from_args(args), FineTuneConfig()
    assert (cfg.opt_func, cfg.weight_decay, cfg.grad_clip, cfg.lr_ratio) == \
        (default.opt_func, default.weight_decay, default.grad_clip, default.lr_ratio)
    assert [(p.epochs, p.max_lr, p.unfreeze) for p in cfg.phases] == \
        [(p.epochs, p.max_lr, p.unfreeze) for p in default.phases]
