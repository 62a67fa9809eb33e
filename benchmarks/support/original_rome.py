"""kmeng01/rome's own ``execute_rome`` run in this process, on our loaded model, beside our ROME (issue 23).

Used by ``benchmarks/editing_latency.py --original-rome PATH``. PATH is a checkout of
https://github.com/kmeng01/rome kept outside this repository (nothing of it is copied here, and
no line of it is edited). The original runs on the same model object, tokenizer, request, context
templates, FF2 second moment and hyper-parameters as our editor; around it (never inside it):

- ``rome.layer_stats`` is a stub module put into ``sys.modules`` before ``rome`` is imported:
  ``layer_stats(...).mom2.moment()`` returns our editor's second moment in ROME's ``mom2_dtype``
  (float32, ROME's own hparams files), so the original ``get_inv_cov`` inverts it itself (and
  caches the inverse in its module-level ``inv_mom2_cache``, emptied for each new instance); the
  real module would need ``datasets`` and Wikipedia. ``compute_u.layer_stats`` is pointed at the
  current instance's stub (the name is bound at import).
- ``rome_main.CONTEXT_TEMPLATES_CACHE`` holds our editor's templates (so ``generate_fast`` never runs).
- During a call only: the device string ``"cuda"`` (hard-coded in ``compute_u`` / ``compute_v``)
  means the model's device (wrappers of ``Tensor.to``, ``torch.tensor``, ``torch.zeros``) when
  the model is not on CUDA; ``model.config.n_embd`` (read by ``compute_v``; Llama configs call
  it ``hidden_size``) is set and removed again; the parameters' ``requires_grad`` flags, which
  ``compute_v`` turns off, are put back; its prints go to a buffer (``loss ...`` lines counted:
  one per forward).
- ``util/globals.py`` reads ``globals.yml`` from the working directory: the import runs from PATH.
- ``matplotlib.style`` (an unused import of ``compute_v``) is stubbed only where matplotlib is absent.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import types
from collections.abc import Mapping
from pathlib import Path

import torch

from backlens.editing.requests import EditRequest
from backlens.editing.weights import restored_after

REQUIRED_FILES = ("rome/rome_main.py", "rome/compute_u.py", "rome/compute_v.py", "rome/repr_tools.py",
                  "rome/rome_hparams.py", "util/nethook.py", "util/globals.py", "globals.yml")
# compute_v's early stop, hard-coded there: ours must use the same.
ORIGINAL_STOP_BELOW_LOSS = 5e-2


class OriginalRomeError(ValueError):
    """The checkout or the setting cannot run the original code; the message is one line."""


def check_checkout(path: str | Path) -> Path:
    """PATH as a kmeng01/rome checkout root, or an OriginalRomeError naming the first missing file."""
    root = Path(path).expanduser().resolve()
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise OriginalRomeError(
            f"--original-rome {path}: not a kmeng01/rome checkout (no {missing[0]}); pass the root of a clone of "
            "https://github.com/kmeng01/rome kept outside this repository")
    return root


def checkout_commit(root: Path, given: str | None = None) -> str:
    """The checkout's commit: ``given``, else ``git rev-parse HEAD`` there, else a COMMIT file at its root
    (an archive extracted without .git), else an OriginalRomeError saying how to give it."""
    if given:
        return given
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0 and (root / ".git").exists():
            return out.stdout.strip()
    except OSError:
        pass
    if (root / "COMMIT").is_file():
        return (root / "COMMIT").read_text().split()[0]
    raise OriginalRomeError(f"--original-rome {root}: not a git checkout and no COMMIT file; "
                            "pass --original-rome-commit <40 hex digits>")


def module_templates(loaded, layer: int) -> dict[str, str]:
    """ROME's module name templates for this model, read off the modules our adapter edits
    (Llama: ``model.layers.{}``, ``model.layers.{}.mlp.down_proj``, ...; GPT-2: ``transformer.h.{}``, ...)."""
    names = {id(module): name for name, module in loaded.model.named_modules()}
    adapter = loaded.adapter
    blocks = names[id(adapter.blocks)]

    def template(module) -> str:
        name = names[id(module)]
        prefix = f"{blocks}.{layer}"
        if not (name == prefix or name.startswith(prefix + ".")):
            raise OriginalRomeError(f"module {name} is not inside block {prefix}")
        return f"{blocks}.{{}}{name[len(prefix):]}"

    return {
        "rewrite_module_tmp": template(adapter.ff2_site(layer).module),
        "layer_module_tmp": f"{blocks}.{{}}",
        "mlp_module_tmp": template(adapter.mlp(layer)),
        "attn_module_tmp": template(adapter.attention(layer)),
        "ln_f_module": names[id(adapter.final_norm)],
        "lm_head_module": names[id(loaded.model.get_output_embeddings())],
    }


def rome_hparams(hparams: Mapping, templates: Mapping[str, str], n_layers: int, mom2_dtype: str = "float32") -> dict:
    """The fields of ROME's ``ROMEHyperParams`` from our resolved ROME hyper-parameters (conf/method/rome.yaml
    with the model's per_model values and any override). ``v_loss_layer``: the last layer where ours
    says null (compute_v only traces that block; its NLL comes from the logits either way)."""
    stop = float(hparams.get("stop_below_loss", ORIGINAL_STOP_BELOW_LOSS))
    if stop != ORIGINAL_STOP_BELOW_LOSS:
        raise OriginalRomeError(f"methods.rome.stop_below_loss={stop}: the original code stops below "
                                f"{ORIGINAL_STOP_BELOW_LOSS} (hard-coded); compare at that value")
    loss_layer = hparams.get("v_loss_layer")
    return {
        "layers": [int(hparams["layer"])],
        "fact_token": str(hparams.get("fact_token", "subject_last")),
        "v_num_grad_steps": int(hparams["v_num_grad_steps"]),
        "v_lr": float(hparams["v_lr"]),
        "v_loss_layer": n_layers - 1 if loss_layer is None else int(loss_layer),
        "v_weight_decay": float(hparams["v_weight_decay"]),
        "clamp_norm_factor": float(hparams["clamp_norm_factor"]),
        "kl_factor": float(hparams["kl_factor"]),
        "mom2_adjustment": bool(hparams.get("mom2_adjustment", True)),
        "context_template_length_params": [list(map(int, p)) for p in hparams["context_template_length_params"]],
        **templates,
        "mom2_dataset": "backlens edit_covariance (stub)",
        "mom2_n_samples": 0,
        "mom2_dtype": mom2_dtype,
    }


def request_dict(request: EditRequest) -> dict:
    """Our request as ROME's: the prompt with "{}" at the subject's slot."""
    start, end = request.subject_start, request.subject_start + len(request.subject)
    rest = request.prompt[:start] + request.prompt[end:]
    if "{" in rest or "}" in rest:
        raise OriginalRomeError(f"case {request.case_id}: prompt {request.prompt!r} has braces; ROME's str.format cannot take it")
    return {"case_id": request.case_id, "prompt": request.prompt[:start] + "{}" + request.prompt[end:],
            "subject": request.subject, "target_new": {"str": request.target_new}}


@contextlib.contextmanager
def _cuda_means(device: torch.device):
    """While inside: ``"cuda"`` passed to ``Tensor.to``, ``torch.tensor`` or ``torch.zeros`` means ``device``."""
    if device.type == "cuda":
        yield
        return
    saved = torch.Tensor.to, torch.tensor, torch.zeros

    def fix(value):
        return device if isinstance(value, str) and value.startswith("cuda") else value

    def wrap(function):
        def wrapped(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = fix(kwargs["device"])
            return function(*(fix(a) for a in args), **kwargs)
        return wrapped

    torch.Tensor.to, torch.tensor, torch.zeros = (wrap(f) for f in saved)
    try:
        yield
    finally:
        torch.Tensor.to, torch.tensor, torch.zeros = saved


class OriginalRome:
    """The original ``execute_rome`` set up to compute what ``editor`` (our RankOneModelEditing) computes."""

    def __init__(self, path: str | Path, editor, second_moment: torch.Tensor, mom2_dtype: str = "float32"):
        self.root = check_checkout(path)
        self.editor, self.loaded = editor, editor.loaded
        self.layer = int(editor.layer)
        self.templates = module_templates(self.loaded, self.layer)
        self.hparams_dict = rome_hparams(editor.hparams, self.templates, self.loaded.adapter.n_layers, mom2_dtype)
        self.weight_name = self.templates["rewrite_module_tmp"].format(self.layer) + ".weight"
        moment = second_moment.to(getattr(torch, mom2_dtype))
        self.rome_main, self.compute_u, hparams_class = self._import(moment)
        self.hparams = hparams_class(**self.hparams_dict)
        # Our templates, so the original never samples its own; its inverse covariance cache emptied
        # (keyed by model name and layer: another model of this process must not hit it).
        self.rome_main.CONTEXT_TEMPLATES_CACHE = list(editor.templates)
        self.compute_u.inv_mom2_cache.clear()

    def _import(self, moment: torch.Tensor):
        for name in ("rome", "util"):
            module = sys.modules.get(name)
            if module is not None and not str(getattr(module, "__file__", "")).startswith(str(self.root)):
                raise OriginalRomeError(f"a module named {name!r} from {getattr(module, '__file__', '?')} is already "
                                        "imported: run the original code in a fresh process")
        expected_layer = self.templates["rewrite_module_tmp"].format(self.layer)
        stub = types.ModuleType("rome.layer_stats")

        def layer_stats(model, tok, layer_name, *args, **kwargs):
            if layer_name != expected_layer:
                raise OriginalRomeError(f"original code asked for statistics of {layer_name}, we hold {expected_layer}'s")
            return types.SimpleNamespace(mom2=types.SimpleNamespace(moment=lambda: moment.clone()))

        stub.layer_stats = layer_stats
        sys.modules["rome.layer_stats"] = stub
        try:
            import matplotlib.style  # noqa: F401  (compute_v imports it and never uses it)
        except ImportError:
            style = types.ModuleType("matplotlib.style")
            style.context = None
            sys.modules.setdefault("matplotlib", types.ModuleType("matplotlib"))
            sys.modules["matplotlib.style"] = style
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))
        cwd = os.getcwd()
        os.chdir(self.root)  # util/globals.py opens "globals.yml" from the working directory
        try:
            import rome.compute_u as compute_u
            import rome.rome_main as rome_main
            from rome.rome_hparams import ROMEHyperParams
        finally:
            os.chdir(cwd)
        # compute_u bound the stub's function at its first import: this instance's moment from here on.
        compute_u.layer_stats = layer_stats
        return rome_main, compute_u, ROMEHyperParams

    def execute(self, request: EditRequest) -> tuple[torch.Tensor, int]:
        """``execute_rome`` on ``request``: (the update in the weight's layout, forwards of the value
        optimisation). The weights are as before on return (execute_rome restores them itself)."""
        model = self.loaded.model
        config = model.config
        had_n_embd = hasattr(config, "n_embd")
        flags = [(p, p.requires_grad) for p in model.parameters()]
        printed = io.StringIO()
        try:
            if not had_n_embd:
                config.n_embd = int(self.loaded.adapter.unembedding.shape[1])
            with _cuda_means(self.loaded.device), contextlib.redirect_stdout(printed):
                deltas = self.rome_main.execute_rome(model, self.loaded.tokenizer, request_dict(request), self.hparams)
        finally:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
            if not had_n_embd and "n_embd" in vars(config):
                delattr(config, "n_embd")
        left, right = deltas[self.weight_name]
        weight = dict(model.named_parameters())[self.weight_name]
        with torch.no_grad():
            update = self.rome_main.upd_matrix_match_shape(left.unsqueeze(1) @ right.unsqueeze(0), weight.shape)
        n_forwards = sum(line.startswith("loss ") for line in printed.getvalue().splitlines())
        return update, n_forwards


def time_beside(editor, original: OriginalRome, requests: list[EditRequest]) -> dict[str, list]:
    """Seconds per edit of our ROME (``apply_with_update``, the weight write included, undone after)
    and of the original ``execute_rome`` on each request, alternating (ours first on even cases,
    the original first on odd ones, so drifting load falls on both alike), after one untimed
    warm-up edit each on the first request (the original inverts and caches C there; ours did at
    construction). Also each pair's relative Frobenius difference of the updates and forwards."""
    site = editor.adapter.ff2_site(editor.layer)
    sync = torch.cuda.synchronize if editor.device.type == "cuda" else (lambda: None)

    def ours(request):
        with restored_after(editor.edited_parameters()):
            started = time.perf_counter()
            facts, update = editor.apply_with_update(request)
            sync()
            seconds = time.perf_counter() - started
        return seconds, update.layers[0].weight_change(site).detach(), int(facts["v_steps"])

    def theirs(request):
        started = time.perf_counter()
        update, n_forwards = original.execute(request)
        sync()
        return time.perf_counter() - started, update, n_forwards

    ours(requests[0])
    theirs(requests[0])
    out: dict[str, list] = {"ours_s": [], "original_s": [], "rel_diff": [], "ours_forwards": [], "original_forwards": []}
    for index, request in enumerate(requests):
        if index % 2 == 0:
            mine, other = ours(request), theirs(request)
        else:
            other, mine = theirs(request), ours(request)
        out["ours_s"].append(mine[0])
        out["original_s"].append(other[0])
        out["rel_diff"].append(relative_difference(mine[1], other[1]))
        out["ours_forwards"].append(mine[2])
        out["original_forwards"].append(other[2])
    return out


def relative_difference(ours: torch.Tensor, original: torch.Tensor) -> float:
    """|ours - original|_F / |original|_F in float64."""
    return float((ours.double() - original.double()).norm() / original.double().norm())
