"""ROME/MEMIT building blocks: context templates, FF2 keys, and the optimised target value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from backlens.editing.base import Editor
from backlens.editing.generation import sample_texts
from backlens.editing.requests import EditRequest, subject_last_index
from backlens.analysis.capture import pad_batch
from backlens.editing.scoring import pad_id
from backlens.editing.training import mean_answer_nll, teacher_forced_batch, trainable_only
from backlens.models.hooks import record_module_io, replace_outputs

_TEMPLATE_STARTS = ["The", "Therefore", "Because", "I", "You"]


def context_templates(editor: Editor, n_generated: int, n_tokens: int, seed: int) -> list[str]:
    """"{}" plus ``n_generated`` short model-sampled prefixes ending in ". {}" (ROME's recipe, seeded)."""
    starts = [_TEMPLATE_STARTS[i % len(_TEMPLATE_STARTS)] for i in range(n_generated)]
    texts = sample_texts(editor.model, editor.tokenizer, starts, max_new_tokens=n_tokens, top_k=5, seed=seed) if starts else []
    cleaned = [t.replace("{", " ").replace("}", " ").replace("\n", " ").strip() for t in texts]
    return ["{}"] + [t + ". {}" for t in cleaned]


def _lookup_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str], subject: str, device: torch.device):
    encoded = [tuple(tokenizer(t)["input_ids"]) for t in texts]
    ids, mask = pad_batch(encoded, pad_id(tokenizer), device)
    lookup = [subject_last_index(tokenizer, t, subject) for t in texts]
    return ids, mask, lookup


@torch.no_grad()
def ff2_keys(editor: Editor, layer: int, texts: list[str], subject: str) -> torch.Tensor:
    """(N, d_ff) FF2 inputs at the subject's last token of each text."""
    site = editor.adapter.ff2_site(layer)
    ids, mask, lookup = _lookup_batch(editor.tokenizer, texts, subject, editor.device)
    with record_module_io({"ff2": site.module}, outputs=False) as record:
        editor.model(input_ids=ids, attention_mask=mask)
    return torch.stack([record.inputs["ff2"][row, index] for row, index in enumerate(lookup)])


@torch.no_grad()
def outputs_at_subject(editor: Editor, layer: int, text: str, subject: str) -> dict[str, torch.Tensor]:
    """FF2 input ``key``, FF2 output ``ff2_out`` (with bias), MLP output and block output at the subject's last token."""
    site = editor.adapter.ff2_site(layer)
    modules = {"ff2": site.module, "mlp": editor.adapter.mlp(layer), "block": editor.adapter.blocks[layer]}
    ids, mask, lookup = _lookup_batch(editor.tokenizer, [text], subject, editor.device)
    with record_module_io(modules) as record:
        editor.model(input_ids=ids, attention_mask=mask)
    index = lookup[0]
    return {
        "key": record.inputs["ff2"][0, index],
        "ff2_out": record.outputs["ff2"][0, index],
        "mlp_out": record.outputs["mlp"][0, index],
        "block_out": record.outputs["block"][0, index],
    }


@dataclass
class ValueResult:
    delta: torch.Tensor
    steps: int
    first_nll: float
    last_nll: float


def optimise_value_delta(
    editor: Editor, request: EditRequest, templates: list[str], layer: int, reference_norm: float, hparams: Mapping
) -> ValueResult:
    """The vector added to layer ``layer``'s MLP output at the subject's last token that makes the
    model say target_new after every context template (ROME's compute_v / MEMIT's compute_z).

    Loss = mean target NLL + kl_factor * KL(original || edited) on "{subject} is a" at the subject
    token + weight_decay * |delta| / |reference|^2; |delta| is clamped to clamp_norm_factor * |reference|.
    """
    texts = [t.format(request.prompt) for t in templates]
    kl_text = f"{request.subject} is a"
    ids, mask, labels = teacher_forced_batch(editor.tokenizer, [(t, request.target_new) for t in texts], editor.device)
    lookup = [subject_last_index(editor.tokenizer, t, request.subject) for t in texts]
    kl_ids = editor.prompt_ids(kl_text)
    kl_index = subject_last_index(editor.tokenizer, kl_text, request.subject)
    mlp = editor.adapter.mlp(layer)
    delta = torch.zeros(editor.adapter.unembedding.shape[1], device=editor.device, requires_grad=True)
    with torch.no_grad():
        original_kl_logp = torch.log_softmax(editor.model(input_ids=kl_ids).logits[0, kl_index].float(), dim=-1)

    def add_delta(rows_and_positions: list[tuple[int, int]]):
        def fn(output_BxTxD: torch.Tensor) -> torch.Tensor:
            output = output_BxTxD.clone()
            for row, position in rows_and_positions:
                output[row, position] = output[row, position] + delta.to(output.dtype)
            return output

        return fn

    optimizer = torch.optim.Adam([delta], lr=float(hparams["v_lr"]))
    max_norm = float(hparams["clamp_norm_factor"]) * reference_norm
    nlls: list[float] = []
    with trainable_only(editor.model, []):
        for _ in range(int(hparams["v_steps"])):
            optimizer.zero_grad()
            with replace_outputs({mlp: add_delta(list(enumerate(lookup)))}):
                nll = mean_answer_nll(editor.model(input_ids=ids, attention_mask=mask).logits, labels)
            with replace_outputs({mlp: add_delta([(0, kl_index)])}):
                kl_logp = torch.log_softmax(editor.model(input_ids=kl_ids).logits[0, kl_index].float(), dim=-1)
            kl = torch.nn.functional.kl_div(kl_logp, original_kl_logp, log_target=True, reduction="sum")
            decay = float(hparams["v_weight_decay"]) * delta.norm() / reference_norm**2
            nlls.append(float(nll.detach()))
            if nlls[-1] < float(hparams["stop_below_nll"]):
                break
            (nll + float(hparams["kl_factor"]) * kl + decay).backward()
            optimizer.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return ValueResult(delta.detach(), len(nlls), nlls[0], nlls[-1])
