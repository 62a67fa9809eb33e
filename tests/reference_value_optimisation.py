"""The value optimisation (ROME's compute_v / MEMIT's compute_z) as it was before issue 23: every
step runs the whole model on the padded batch and takes log_softmax over every position's logits.
Kept as the reference that tests/test_value_optimisation.py compares the faster path with."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from backlens.data.batching import pad_batch, pad_id
from backlens.editing.base import Editor
from backlens.editing.keys_values import TargetResult
from backlens.editing.requests import EditRequest, continuation, subject_token_index
from backlens.editing.training import mean_answer_nll, trainable_only
from backlens.models.hooks import record_module_io, replace_outputs


def reference_optimise_target(
    editor: Editor, request: EditRequest, templates: list[str], layer: int, at: str, hparams: Mapping,
    nll_layer: int | None = None,
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
    the model's logits (ROME's compute_v ignores v_loss_layer).
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
    labels = torch.full_like(ids[:n_rewrite], -100)
    for row, item in enumerate(items):
        first = len(item.prompt_ids) - 1
        labels[row, first : first + len(item.target_ids)] = torch.tensor(item.target_ids, device=editor.device)
    lookup = [subject_token_index(editor.tokenizer, text, start, request.subject, fact_token)
              for text, start in located]
    lookup.append(subject_token_index(editor.tokenizer, kl_text, 0, request.subject, fact_token))  # subject first
    module = editor.adapter.mlp(layer) if at == "mlp" else editor.adapter.blocks[layer]
    last_layer = editor.adapter.n_layers - 1
    read_layer = None if nll_layer is None or int(nll_layer) >= last_layer else int(nll_layer)
    delta = torch.zeros(editor.adapter.unembedding.shape[1], device=editor.device, requires_grad=True)
    initial: torch.Tensor | None = None

    def add_delta(output_BxTxD: torch.Tensor) -> torch.Tensor:
        nonlocal initial
        if initial is None:
            initial = output_BxTxD[0, lookup[0]].detach().clone()
        output = output_BxTxD.clone()
        for row, position in enumerate(lookup):
            output[row, position] = output[row, position] + delta.to(output.dtype)
        return output

    optimizer = torch.optim.Adam([delta], lr=float(hparams["v_lr"]))
    n_steps = int(hparams["v_num_grad_steps"])
    original_kl_logp = None
    losses: list[float] = []
    nll_value = float("nan")
    with trainable_only(editor.model, []):
        for step in range(n_steps):
            optimizer.zero_grad()
            watched = {"loss": editor.adapter.blocks[read_layer]} if read_layer is not None else {}
            with replace_outputs({module: add_delta}), record_module_io(watched, inputs=False) as record:
                logits = editor.model(input_ids=ids, attention_mask=mask).logits
            kl_logp = torch.log_softmax(logits[n_rewrite, lookup[-1]].float(), dim=-1)[None]
            if original_kl_logp is None:
                original_kl_logp = kl_logp.detach().clone()
            rewrite_logits = editor.adapter.logit_lens(record.outputs["loss"][:n_rewrite]) if read_layer is not None else logits[:n_rewrite]
            nll = mean_answer_nll(rewrite_logits, labels)
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
