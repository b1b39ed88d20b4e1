"""The package's shape: imports flow one way, every registered method works, every task's stages are in order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from weakseg.backbones import create_backbone
from weakseg.cams.cam import make_views
from weakseg.config import apply_overrides
from weakseg.errors import ConfigError
from weakseg.methods import METHODS, create_method
from weakseg.methods.base import LoaderContext, get_method_class
from weakseg.tasks import PLANNED, TASKS, get_task

PKG = Path(__file__).resolve().parents[1] / "weakseg"

# Data flows one way: a module may import from its own subpackage or from a lower layer, never from a
# higher one or from another subpackage of its own layer (which would allow cycles between them).
LAYERS: list[set[str]] = [
    {"errors"},
    {"config"},
    {"engine"},
    {"data"},
    {"backbones", "losses", "eval"},
    {"cams", "refine"},
    {"seg"},
    {"methods"},
    {"viz"},
    {"stages"},
    {"tasks"},
    {"pipeline"},
    {"cli"},
    {"__main__", "__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def _part(module: str) -> str:
    """The subpackage (or top-level module) a dotted module name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported weakseg module, at module top)`` for every import of the package in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(n, id(node) in top) for n in names if n == "weakseg" or n.startswith("weakseg.")]
    return out


def test_every_subpackage_has_a_layer():
    assert {_part(m) for m in _modules()} <= set(LAYER), "a new subpackage needs a place in LAYERS"


def test_imports_flow_one_way_and_sit_at_module_top():
    against, inner = [], []
    for module, path in _modules().items():
        src = _part(module)
        for target, at_top in _imports(path):
            if not at_top:
                inner.append(f"{module} imports {target} inside a function")
            dst = _part(target)
            if dst != src and LAYER[dst] >= LAYER[src]:
                against.append(f"{module} ({src}, layer {LAYER[src]}) imports {target} ({dst}, layer {LAYER[dst]})")
    assert not against, "imports against the flow:\n" + "\n".join(against)
    assert not inner, "function-level imports of the package (only optional extras may be lazy):\n" + "\n".join(inner)


def test_no_module_cycles():
    mods = _modules()
    graph = {m: {t for t, _ in _imports(p) if t in mods and t != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_violation(tmp_path):
    """The flow rule can fail: a data module importing a method is against it."""
    f = tmp_path / "bad.py"
    f.write_text("from weakseg.methods.mcis import MCISNet\n\ndef g():\n    import weakseg.stages.train_cls\n")
    found = _imports(f)
    assert ("weakseg.methods.mcis", True) in found and ("weakseg.stages.train_cls", False) in found
    assert LAYER[_part("weakseg.methods.mcis")] > LAYER["data"]


# ---------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if m.task == "tags"))
def test_every_method_trains_a_step_and_predicts(name, synth_dataset):
    """Each registered method of task tags (other tasks test their own hooks), at its tiny preset on the tiny
    backbone: one step lowers nothing to NaN, the weights move, and its prediction hook gives maps in [0, 1] at
    the image size for the asked classes."""
    torch.manual_seed(0)
    method = create_method(name, "tiny", ("input_size=48",))
    net = method.build(create_backbone("tiny", None, method.cfg.output_stride, pretrained=False), 10)
    make_loader, steps = method.loader(synth_dataset, LoaderContext(seed=0))
    assert steps >= 1
    batch = next(iter(make_loader(0)))
    opt = method.optimizer(net)
    before = [p.detach().clone() for p in net.parameters()]
    losses = method.step(net.train(), batch, method.epochs - 1)
    assert torch.isfinite(losses["loss"])
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    predictor = method.cam_predictor(net.eval(), synth_dataset, make_views((1.0,), True), torch.device("cpu"), 0)
    i = next(k for k, r in enumerate(synth_dataset.records) if r.labels)
    classes = list(synth_dataset[i].labels)
    cams = predictor(i, classes)
    h, w = synth_dataset.load_image(i).shape[:2]
    assert cams.shape == (len(classes), h, w)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1


def test_method_registry_errors_name_the_valid_choices():
    with pytest.raises(ConfigError, match="valid names: .*cam, .*mcis"):
        get_method_class("nope")
    with pytest.raises(ConfigError, match="preset of method 'cam'.*cpu192"):
        create_method("cam", "huge")
    with pytest.raises(ConfigError, match="no option 'contrastive_from_epoch'"):
        create_method("cam", "tiny", ("contrastive_from_epoch=1",))  # an MCIS option is not a CAM option


def test_overrides_parse_by_field_type():
    cfg = create_method("mcis", "tiny").cfg
    new = apply_overrides(cfg, ("epochs=3", "lr=0.5", "lr_milestones=[1, 2]", "web.threshold=0.25",
                                "extra=single:/a,web:/b:1", "test_self_pairs=false", "jitter.hue=0"))  # fmt: skip
    assert (new.epochs, new.lr, new.lr_milestones, new.web.threshold) == (3, 0.5, (1, 2), 0.25)
    assert new.extra == ("single:/a", "web:/b:1") and new.test_self_pairs is False and new.jitter.hue == 0.0
    with pytest.raises(ConfigError, match="cannot read"):
        apply_overrides(cfg, ("epochs=many",))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(cfg, ("epochs",))


# ---------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_stages_read_only_what_earlier_stages_wrote(name):
    task = TASKS[name]
    written = {"data"}
    optional = {"aff"}  # written only when the rw refiner is chosen
    for stage in task.stages:
        missing = set(stage.reads) - written - optional
        assert not missing, f"{name}: stage {stage.name} reads {missing} before any stage writes it"
        written.add(stage.folder)


def test_every_task_with_a_method_has_one_registered():
    for task in TASKS.values():
        if task.needs_method:
            assert any(m.task == task.name for m in METHODS.values()), task.name


def test_planned_tasks_are_named_and_refused_clearly():
    assert {"box", "scribble", "saliency", "few-shot", "semi-supervised", "co-saliency", "video"} <= {*PLANNED, *TASKS}
    for name in PLANNED:  # the tasks still planned (the list shrinks as methods land)
        with pytest.raises(ConfigError, match="no implemented method yet"):
            get_task(name)
    with pytest.raises(ConfigError, match="valid names"):
        get_task("boxes")
