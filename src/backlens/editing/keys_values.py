"""ROME/MEMIT building blocks: context templates, FF2 keys, and the optimised target vector.

Written against kmeng01/rome (rome/compute_u.py, compute_v.py, rome_main.py) and kmeng01/memit
(memit/compute_z.py, compute_ks.py, memit_main.py); tests/test_golden_rome_memit.py compares
the results with numbers the original code produced (tests/fixtures/golden/).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from backlens.data.batching import pad_batch, pad_id
from backlens.editing.base import Editor
from backlens.editing.generation import sample_token_ids
from backlens.editing.requests import EditRequest, continuation, subject_token_index
from backlens.editing.training import trainable_only
from backlens.models.hooks import record_module_io, replace_outputs
from backlens.tracing.runs import KeyValuePrefix, KeyValueRecorder

# ROME's get_context_templates: ["{}"] + 10 texts of 5 tokens and 10 of 10 tokens (the model's
# start token included), sampled from the start token. MEMIT's: 5 texts of 10 tokens, one after
# each of these starts; its keys average the template groups ([["{}"], generated]) first.
ROME_TEMPLATE_LENGTHS = ((5, 10), (10, 10))
MEMIT_TEMPLATE_LENGTHS = ((10, 5),)
MEMIT_TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You")


def _start_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """ROME samples after "<|endoftext|>" (GPT-2's document boundary); a tokenizer without that
    single token uses its BOS (else EOS) token."""
    if len(tokenizer("<|endoftext|>", add_special_tokens=False)["input_ids"]) == 1:
        return "<|endoftext|>"
    start = tokenizer.bos_token or tokenizer.eos_token
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to sample ROME's context templates from")
    return start


def context_templates(
    editor: Editor, length_params: Sequence[Sequence[int]], starts: Sequence[str] | None, seed: int, top_k: int = 5
) -> list[list[str]]:
    """[["{}"], generated]: for each (length, n) of ``length_params``, n texts of ``length`` tokens
    in all (the start included), top-k sampled (seeded) after ``starts`` taken in turn, or after
    the model's start token when ``starts`` is None (ROME). As generate_fast: NFKD-normalised,
    blank lines joined, the start token dropped; braces removed so ``str.format`` stays safe."""
    special = _start_text(editor.tokenizer)
    prompts = list(starts) if starts else [special]
    generated: list[str] = []
    for group, (length, count) in enumerate(length_params):
        chosen = [prompts[i * len(prompts) // int(count)] if len(prompts) > 1 else prompts[0] for i in range(int(count))]
        by_start: dict[str, int] = {}
        for prompt in chosen:
            by_start[prompt] = by_start.get(prompt, 0) + 1
        for index, (prompt, n) in enumerate(by_start.items()):
            n_prompt = len(editor.tokenizer(prompt)["input_ids"])
            new_ids = sample_token_ids(editor.model, editor.tokenizer, [prompt] * n, max_new_tokens=max(0, int(length) - n_prompt),
                                       top_k=top_k, seed=seed + 1000 * group + index)
            for row in range(n):
                text = editor.tokenizer.decode(editor.tokenizer(prompt)["input_ids"] + new_ids[row].tolist())
                text = unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace(special, "")
                generated.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return [["{}"], generated] if generated else [["{}"]]


def _lookup_batch(editor: Editor, located: Sequence[tuple[str, int]], subject: str, fact_token: str):
    """One padded batch of (text, subject's character start) pairs and each text's fact-token index."""
    encoded = [tuple(editor.tokenizer(text)["input_ids"]) for text, _ in located]
    ids, mask = pad_batch(encoded, pad_id(editor.tokenizer), editor.device)
    lookup = [subject_token_index(editor.tokenizer, text, start, subject, fact_token) for text, start in located]
    return ids, mask, lookup


@torch.no_grad()
def _forward_through(editor: Editor, ids_BxT: torch.Tensor, mask_BxT: torch.Tensor, layer: int) -> None:
    """Run blocks 0 .. ``layer`` for the hooks that record there: nothing above ``layer`` (nor the
    unembedding) changes what they see. Right-padded rows need no padding mask in a layer range
    (``run_layers``); a family without one (Gemma 1/2) runs the whole model."""
    if editor.adapter.supports_layer_ranges:
        editor.adapter.residual_entering(ids_BxT, layer + 1)
    else:
        editor.model(input_ids=ids_BxT, attention_mask=mask_BxT)


@torch.no_grad()
def ff2_keys(editor: Editor, layer: int, located: Sequence[tuple[str, int]], subject: str,
             fact_token: str = "subject_last") -> torch.Tensor:
    """(N, d_ff) FF2 inputs at the subject's fact token of each (text, subject start) pair (one
    padded batch, as repr_tools.get_reprs_at_word_tokens)."""
    site = editor.adapter.ff2_site(layer)
    ids, mask, lookup = _lookup_batch(editor, located, subject, fact_token)
    with record_module_io({"ff2": site.module}, outputs=False) as record:
        _forward_through(editor, ids, mask, layer)
    return torch.stack([record.inputs["ff2"][row, index] for row, index in enumerate(lookup)])


@torch.no_grad()
def ff2_inputs_outputs(editor: Editor, layer: int, located: Sequence[tuple[str, int]], subject: str,
                       fact_token: str = "subject_last") -> tuple[torch.Tensor, torch.Tensor]:
    """((N, d_ff) FF2 inputs, (N, d) FF2 outputs with bias) at the subject's fact token of each
    (text, subject start) pair, from one padded batch (r-ROME's keys and current values over the
    context templates)."""
    site = editor.adapter.ff2_site(layer)
    ids, mask, lookup = _lookup_batch(editor, located, subject, fact_token)
    with record_module_io({"ff2": site.module}) as record:
        _forward_through(editor, ids, mask, layer)
    rows = range(len(lookup))
    return (torch.stack([record.inputs["ff2"][row, lookup[row]] for row in rows]),
            torch.stack([record.outputs["ff2"][row, lookup[row]] for row in rows]))


def grouped_mean_key(editor: Editor, layer: int, groups: list[list[str]], request: EditRequest, fact_token: str) -> torch.Tensor:
    """MEMIT's compute_ks for one request: the mean over template groups of each group's mean key."""
    located = [request.in_context(t) for group in groups for t in group]
    keys = ff2_keys(editor, layer, located, request.subject, fact_token)
    means, start = [], 0
    for group in groups:
        means.append(keys[start : start + len(group)].mean(0))
        start += len(group)
    return torch.stack(means).mean(0)


@torch.no_grad()
def outputs_at_subject(
    editor: Editor, layer: int, request: EditRequest, fact_token: str = "subject_last"
) -> dict[str, torch.Tensor]:
    """FF2 input ``key``, FF2 output ``ff2_out`` (with bias), MLP output and block output at the
    subject's fact token of the edit prompt."""
    site = editor.adapter.ff2_site(layer)
    modules = {"ff2": site.module, "mlp": editor.adapter.mlp(layer), "block": editor.adapter.blocks[layer]}
    ids, mask, lookup = _lookup_batch(editor, [(request.prompt, request.subject_start)], request.subject, fact_token)
    with record_module_io(modules) as record:
        _forward_through(editor, ids, mask, layer)
    index = lookup[0]
    return {
        "key": record.inputs["ff2"][0, index],
        "ff2_out": record.outputs["ff2"][0, index],
        "mlp_out": record.outputs["mlp"][0, index],
        "block_out": record.outputs["block"][0, index],
    }


@dataclass
class TargetResult:
    """``initial`` (the hooked module's output at the subject in the first template) + ``delta`` = v*;
    ``losses``: the total loss of every forward pass, the last one the value the optimisation stopped at."""

    initial: torch.Tensor
    delta: torch.Tensor
    losses: tuple[float, ...]
    last_nll: float

    @property
    def target(self) -> torch.Tensor:
        return self.initial + self.delta

    @property
    def steps(self) -> int:
        return len(self.losses)

    def facts(self) -> dict[str, object]:
        """What ROME and MEMIT report per edit (the evaluation's case log): steps, first / last loss, last NLL."""
        return {"v_steps": self.steps, "v_first_loss": self.losses[0], "v_last_loss": self.losses[-1],
                "v_last_nll": self.last_nll}


class _ValueForward:
    """The value optimisation's forward pass, reduced to what its loss reads.

    Only delta changes between steps, and it enters at ``layer`` at each row's edit position, so
    under the causal mask nothing before that position changes in any layer. ``starts``: per row,
    the first position the step depends on or reads (the edit position, or an earlier read). Once,
    without a graph: the residual entering ``layer`` and, from there to the last layer, every
    layer's keys/values with delta = 0 (``adapter.run_layers``). Each step then runs the layers
    from ``layer`` on only the positions from each row's start, attending to the cached keys/values
    of the positions before it: the cached prefixes left-padded to the longest (masked), the rows'
    suffixes right-padded, each row keeping its own positions for the rotary tables. The edited
    module (ROME's MLP, MEMIT's block) runs inside that range, so a family that normalises the MLP
    output before the residual (Gemma 3) is handled as any other. ``starts=None``: each step runs
    the whole rows from the cached residual (the path before; tests and benchmarks compare the
    two). A family whose blocks cannot run as a layer range (Gemma 1/2: ``attention_types``
    raises) runs the whole model each step.

    ``shift_B``: row b's position p is step position p - shift_B[b]. The hidden states are taken
    only where the loss reads them, before the final norm and unembedding.
    """

    def __init__(self, editor: Editor, ids_BxT: torch.Tensor, mask_BxT: torch.Tensor, layer: int, read_layer: int | None,
                 starts: Sequence[int] | None):
        self.adapter, self.model = editor.adapter, editor.model
        self.ids_BxT, self.mask_BxT = ids_BxT, mask_BxT
        self.layer, self.read_layer = layer, read_layer
        self.last = editor.adapter.n_layers - 1
        self.shift_B = torch.zeros(ids_BxT.shape[0], dtype=torch.long, device=ids_BxT.device)
        self.entering_BxTxD: torch.Tensor | None = None
        self.suffix: dict[str, object] | None = None
        try:
            self.entering_BxTxD = self.adapter.residual_entering(ids_BxT, layer)
        except NotImplementedError:
            return
        if starts is not None:
            self._cache_prefixes(torch.tensor(list(starts), device=ids_BxT.device))

    @torch.no_grad()
    def _cache_prefixes(self, starts_B: torch.Tensor) -> None:
        _, n_positions, width = self.entering_BxTxD.shape
        n_prefix = int(starts_B.max())
        # Causal: the keys/values of positions before n_prefix depend on nothing after them.
        recorder = KeyValueRecorder()
        if n_prefix > 0:
            self.adapter.run_layers(self.entering_BxTxD[:, :n_prefix], self.layer, self.last + 1, key_values=recorder)
        lengths_B = self.mask_BxT.sum(1)
        n_suffix = int((lengths_B - starts_B).max())
        # Prefix slot j of row b holds position j - (n_prefix - start_b); earlier slots are padding.
        prefix_BxP = torch.arange(n_prefix, device=starts_B.device)[None] - (n_prefix - starts_B)[:, None]
        prefix_valid_BxP = prefix_BxP >= 0
        gather_BxP = prefix_BxP.clamp(min=0)

        def aligned(states_BxHxTxE: torch.Tensor) -> torch.Tensor:
            index = gather_BxP[:, None, :, None].expand(-1, states_BxHxTxE.shape[1], -1, states_BxHxTxE.shape[3])
            return states_BxHxTxE.gather(2, index)

        keys = {layer: aligned(k) for layer, k in recorder.keys.items()}
        values = {layer: aligned(v) for layer, v in recorder.values.items()}
        positions_BxS = starts_B[:, None] + torch.arange(n_suffix, device=starts_B.device)[None]
        # Suffix slots past a row's end repeat its last position's state: later than every real
        # slot of the row, so no real position attends to them.
        gather_BxS = positions_BxS.clamp(max=n_positions - 1)
        self.shift_B = starts_B
        self.suffix = {
            "hidden": self.entering_BxTxD.gather(1, gather_BxS[..., None].expand(-1, -1, width)),
            "keys": keys, "values": values,
            "padding": torch.cat([prefix_valid_BxP, torch.ones_like(positions_BxS, dtype=torch.bool)], 1).long(),
            "positions": positions_BxS, "first": n_prefix,
        }

    def _run(self, hidden: torch.Tensor, start: int, end: int, rows: slice) -> torch.Tensor:
        suffix = self.suffix
        if suffix is None or suffix["first"] == 0:  # whole rows, or every row starts at position 0
            return self.adapter.run_layers(hidden, start, end, grad=True)
        prefix = KeyValuePrefix({layer: k[rows] for layer, k in suffix["keys"].items()},
                                {layer: v[rows] for layer, v in suffix["values"].items()})
        return self.adapter.run_layers(hidden, start, end, first_position=suffix["first"], key_values=prefix,
                                       padding_mask=suffix["padding"][rows], grad=True,
                                       position_ids=suffix["positions"][rows])

    def __call__(self, kl_row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states the NLL reads: the ``read_layer`` block's output, else the last block's;
        the last block's output of row ``kl_row``), both (rows, step positions, d)."""
        if self.entering_BxTxD is None:
            blocks = {"last": self.adapter.blocks[self.last]}
            if self.read_layer is not None:
                blocks["read"] = self.adapter.blocks[self.read_layer]
            with record_module_io(blocks, inputs=False) as record:
                self.model(input_ids=self.ids_BxT, attention_mask=self.mask_BxT)
            last = record.outputs["last"]
            return record.outputs.get("read", last), last[kl_row : kl_row + 1]
        hidden = self.entering_BxTxD if self.suffix is None else self.suffix["hidden"]
        everyone = slice(None)
        if self.read_layer is None:
            last = self._run(hidden, self.layer, self.last + 1, everyone)
            return last, last[kl_row : kl_row + 1]
        # MEMIT's v_loss_layer: only the KL prompt goes on past the layer the NLL is read from.
        read = self._run(hidden, self.layer, self.read_layer + 1, everyone)
        last = self._run(read[kl_row : kl_row + 1], self.read_layer + 1, self.last + 1, slice(kl_row, kl_row + 1))
        return read, last


def optimise_target(
    editor: Editor, request: EditRequest, templates: list[str], layer: int, at: str, hparams: Mapping,
    nll_layer: int | None = None, from_subject: bool = True,
) -> TargetResult:
    """The vector added to layer ``layer``'s output ``at`` ("mlp": ROME's compute_v; "block": MEMIT's
    compute_z) at the subject in every template and in "{subject} is a", optimised so that the
    model says target_new after every template.

    As the original code: one padded batch of the rewriting prompts and the KL prompt per step;
    loss = mean target NLL + kl_factor * KL(edited || original) at the KL prompt's subject token
    + v_weight_decay * |delta| / |initial|^2; stop when the total loss is below
    ``stop_below_loss`` or on the last of v_num_grad_steps forwards (N forwards, at most N-1
    Adam steps), each step followed by projecting delta into the ball of radius
    clamp_norm_factor * |initial|. ``nll_layer``: the NLL is read through the final norm and
    unembedding from this block's output (MEMIT's v_loss_layer); None or the last layer means
    the model's logits (ROME's compute_v ignores v_loss_layer). Each step computes only what the
    loss reads (``_ValueForward``): from the edited layer on, and with ``from_subject`` (the
    default) only each row's positions from the edit position on; tests/test_value_optimisation.py
    pins both to the whole-model path within float32 round-off.
    """
    if at not in ("mlp", "block"):
        raise ValueError(f"optimise_target: at={at!r}; use 'mlp' (ROME) or 'block' (MEMIT)")
    fact_token = str(hparams.get("fact_token", "subject_last"))
    located = [request.in_context(t) for t in templates]
    items = [continuation(editor.tokenizer, text, request.target_new) for text, _ in located]
    kl_text = f"{request.subject} is a"
    kl_ids = tuple(editor.tokenizer(kl_text)["input_ids"])
    ids, mask = pad_batch([c.prompt_ids + c.target_ids[:-1] for c in items] + [kl_ids], pad_id(editor.tokenizer), editor.device)
    n_rewrite = len(items)
    # The (row, position, token) of every target token the NLL reads, and each row's count.
    label_rows, label_positions, label_ids = [], [], []
    for row, item in enumerate(items):
        first = len(item.prompt_ids) - 1
        label_rows += [row] * len(item.target_ids)
        label_positions += range(first, first + len(item.target_ids))
        label_ids += item.target_ids
    label_rows_N = torch.tensor(label_rows, device=editor.device)
    label_positions_N = torch.tensor(label_positions, device=editor.device)
    label_ids_N = torch.tensor(label_ids, device=editor.device)
    counts_R = torch.tensor([len(item.target_ids) for item in items], device=editor.device, dtype=torch.float32)
    lookup = [subject_token_index(editor.tokenizer, text, start, request.subject, fact_token)
              for text, start in located]
    lookup.append(subject_token_index(editor.tokenizer, kl_text, 0, request.subject, fact_token))  # subject first
    edit_rows = torch.arange(len(lookup), device=editor.device)
    module = editor.adapter.mlp(layer) if at == "mlp" else editor.adapter.blocks[layer]
    last_layer = editor.adapter.n_layers - 1
    read_layer = None if nll_layer is None or int(nll_layer) >= last_layer else int(nll_layer)
    delta = torch.zeros(editor.adapter.unembedding.shape[1], device=editor.device, requires_grad=True)
    initial: torch.Tensor | None = None

    def add_delta(output_BxTxD: torch.Tensor) -> torch.Tensor:
        nonlocal initial
        if initial is None:
            initial = output_BxTxD[0, edit_positions[0]].detach().clone()
        added = delta.to(output_BxTxD.dtype).expand(len(lookup), -1)
        return output_BxTxD.index_put((edit_rows, edit_positions), added, accumulate=True)

    # Each row's first position the steps depend on or read: its edit position (a target token is
    # read at the prompt's last position or later, so never earlier for a fact token in the prompt).
    first_read = [len(item.prompt_ids) - 1 for item in items] + [lookup[-1]]
    starts = [min(edit, read) for edit, read in zip(lookup, first_read)] if from_subject else None
    forward = _ValueForward(editor, ids, mask, layer, read_layer, starts)
    edit_positions = torch.tensor(lookup, device=editor.device) - forward.shift_B
    label_positions_N = label_positions_N - forward.shift_B[label_rows_N]
    kl_position = lookup[-1] - int(forward.shift_B[n_rewrite])
    optimizer = torch.optim.Adam([delta], lr=float(hparams["v_lr"]))
    n_steps = int(hparams["v_num_grad_steps"])
    original_kl_logp = None
    losses: list[float] = []
    nll_value = float("nan")
    with trainable_only(editor.model, []):
        for step in range(n_steps):
            optimizer.zero_grad()
            with replace_outputs({module: add_delta}):
                nll_hidden_BxTxD, kl_hidden_1xTxD = forward(n_rewrite)
            kl_logits = editor.adapter.logit_lens(kl_hidden_1xTxD[0, kl_position])
            kl_logp = torch.log_softmax(kl_logits.float(), dim=-1)[None]
            if original_kl_logp is None:
                original_kl_logp = kl_logp.detach().clone()
            answer_logits_NxV = editor.adapter.logit_lens(nll_hidden_BxTxD[label_rows_N, label_positions_N])
            picked_N = torch.log_softmax(answer_logits_NxV.float(), dim=-1).gather(-1, label_ids_N[:, None])[:, 0]
            per_row_R = torch.zeros(n_rewrite, device=editor.device).index_add(0, label_rows_N, picked_N)
            nll = -(per_row_R / counts_R).mean()
            # kl_div(input, target) = KL(target || input): ROME's argument order, KL(edited || original).
            kl = torch.nn.functional.kl_div(original_kl_logp, kl_logp, log_target=True, reduction="batchmean")
            decay = float(hparams["v_weight_decay"]) * delta.norm() / initial.norm() ** 2
            loss = nll + float(hparams["kl_factor"]) * kl + decay
            losses.append(float(loss.detach()))
            nll_value = float(nll.detach())
            if losses[-1] < float(hparams["stop_below_loss"]) or step == n_steps - 1:
                break
            loss.backward()
            optimizer.step()
            max_norm = float(hparams["clamp_norm_factor"]) * initial.norm()
            if delta.norm() > max_norm:
                with torch.no_grad():
                    delta[...] = delta * max_norm / delta.norm()
    return TargetResult(initial, delta.detach(), tuple(losses), nll_value)
