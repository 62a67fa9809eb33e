"""Architecture adapters: the only code that knows a model family's module names.

Everything else in the project asks an adapter for "the FF2 matrix of layer 7" or "the
final norm", never for ``mlp.c_proj`` or ``down_proj``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch
from torch import nn

from backlens.errors import UserError
from backlens.models.masks import attention_mask

# Re-exported: the sites are the adapters' vocabulary (``from backlens.models.adapters import LinearSite``).
from backlens.models.sites import (  # noqa: F401
    PROJECTIONS, LinearSite, Projection, WeightLayout, head_interleaved_ranges,
)


class KeyValueSource(Protocol):
    """What a block's attention needs from a cache: ``update`` returns the keys/values to attend to.

    Given the new positions' keys/values (B, heads, S, head_dim) of layer ``layer_idx`` it
    returns (B, heads, first_position + S, head_dim): earlier positions' followed by the new.
    """

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class UnsupportedArchitectureError(UserError, ValueError):
    """The model's family has no adapter; the message names it and the supported families."""


class ArchitectureAdapter(ABC):
    """Uniform access to the parts of a decoder-only transformer the analyses need."""

    families: ClassVar[tuple[str, ...]]
    # Blocks receive the cache under this keyword; a wrong name would be swallowed by **kwargs
    # and the cache silently ignored, so a family that names it differently must say so.
    _cache_keyword: ClassVar[str] = "past_key_values"

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks; block i's output is the residual stream after layer i."""

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @abstractmethod
    def ff1_sites(self, layer: int) -> tuple[LinearSite, ...]:
        """FF1 matrices (GPT-2: one; gated MLPs: gate and up)."""

    @abstractmethod
    def ff2_site(self, layer: int) -> LinearSite:
        """The FF2 (value) matrix, whose input is the d_ff activation."""

    def linear_sites(self, layer: int) -> tuple[LinearSite, ...]:
        return (*self.ff1_sites(layer), self.ff2_site(layer))

    @abstractmethod
    def attention(self, layer: int) -> nn.Module:
        """Module whose (first) output is the attention contribution to the residual."""

    @abstractmethod
    def attention_projections(self, layer: int) -> tuple[Projection, ...]:
        """W_Q, W_K, W_V, W_O of the layer (names ``PROJECTIONS``), each as units of a LinearSite.
        W_O's output is the attention output (its VJP the attention-output VJP)."""

    def attention_sites(self, layer: int) -> tuple[LinearSite, ...]:
        """The distinct linear maps behind the projections (a fused Q/K/V matrix appears once)."""
        sites: dict[str, LinearSite] = {}
        for projection in self.attention_projections(layer):
            sites.setdefault(projection.site.matrix, projection.site)
        return tuple(sites.values())

    @abstractmethod
    def mlp(self, layer: int) -> nn.Module:
        """Module whose (first) output is the MLP contribution to the residual."""

    @property
    @abstractmethod
    def final_norm(self) -> nn.Module:
        """The norm applied to the last residual stream before unembedding."""

    @property
    def input_embedding(self) -> torch.Tensor:
        """(V, d) input embedding matrix."""
        return self.model.get_input_embeddings().weight

    @property
    def input_embedding_scale(self) -> float:
        """Factor the embedding module applies to ``input_embedding``'s rows (``token_embeddings``
        carries it; Gemma 3 multiplies by sqrt(d) inside its embedding)."""
        return 1.0

    @property
    def unembedding(self) -> torch.Tensor:
        """(V, d) unembedding matrix."""
        return self.model.get_output_embeddings().weight

    @property
    def unembedding_bias(self) -> torch.Tensor | None:
        return getattr(self.model.get_output_embeddings(), "bias", None)

    def logit_lens(self, hidden_Nxd: torch.Tensor) -> torch.Tensor:
        """Project vectors through the model's own final norm and unembedding: (..., d) -> (..., V)."""
        normed = self.final_norm(hidden_Nxd.to(self.unembedding.dtype))
        logits = normed @ self.unembedding.T
        if self.unembedding_bias is not None:
            logits = logits + self.unembedding_bias
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def token_embeddings(self, input_ids_BxT: torch.Tensor) -> torch.Tensor:
        """(B, T, d) token embeddings, before any position information (where ROME adds its noise)."""
        return self.model.get_input_embeddings()(input_ids_BxT)

    def residual_input(self, token_embeddings_BxSxd: torch.Tensor, first_position: int = 0) -> torch.Tensor:
        """The residual stream entering block 0 at positions first_position .. first_position + S - 1."""
        return token_embeddings_BxSxd

    def attention_types(self) -> tuple[str, ...]:
        """Each block's attention: "full_attention" (causal) or "sliding_attention" (causal within the
        config's ``sliding_window`` most recent positions), as the model's forward picks its masks."""
        return ("full_attention",) * self.n_layers

    @property
    def supports_layer_ranges(self) -> bool:
        """Whether ``run_layers`` can run this model's blocks (``attention_types`` raises where not: Gemma 1/2)."""
        try:
            self.attention_types()
        except NotImplementedError:
            return False
        return True

    @torch.no_grad()
    def residual_entering(self, input_ids_BxT: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, T, d) residual stream entering block ``layer`` (blocks 0 .. layer - 1 through ``run_layers``,
        no graph). Left-padded rows need ``run_layers``' padding mask; right-padded ones do not."""
        return self.run_layers(self.residual_input(self.token_embeddings(input_ids_BxT)), 0, layer)

    def _block_kwargs(
        self, hidden_BxSxd: torch.Tensor, position_ids_1xS: torch.Tensor, attention_type: str
    ) -> dict[str, object]:
        """Extra keyword arguments the blocks of one attention type need (e.g. rotary embeddings)."""
        return {}

    def run_layers(
        self,
        hidden_BxSxd: torch.Tensor,
        start: int,
        end: int,
        *,
        first_position: int = 0,
        key_values: KeyValueSource | None = None,
        padding_mask: torch.Tensor | None = None,
        grad: bool = False,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run blocks ``start .. end - 1`` on the residual stream of positions first_position.. (B, S, d).

        Earlier positions enter only through ``key_values`` (their keys and values per layer),
        so a suffix of the prompt can be recomputed from a cached prefix. Right-padded rows need
        no padding mask: the causal mask already keeps a real position from seeing later pads.
        ``padding_mask``: (B, first_position + S), 1 at real tokens, as the model's ``attention_mask``
        (left-padded rows need it; positions stay 0, 1, .. as in the model's forward without
        position_ids). ``grad``: keep the autograd graph (ROME/MEMIT's value optimisation runs the
        layers above the edit site this way); otherwise no graph is built. ``position_ids``: (B, S) per-row
        rotary positions for rows shifted against the slots (a left-padded cached prefix); masks stay in slots.
        """
        if not 0 <= start <= end <= self.n_layers:
            raise ValueError(f"run_layers: need 0 <= start <= end <= {self.n_layers}, got start={start}, end={end}")
        if first_position > 0 and key_values is None:
            raise ValueError(
                f"run_layers: first_position={first_position} needs key_values with the earlier positions' keys/values"
            )
        types = self.attention_types()
        n_new = hidden_BxSxd.shape[1]
        slot_ids = torch.arange(first_position, first_position + n_new, device=hidden_BxSxd.device)[None]
        # Masks and rotary tables once per attention type in the range, as the model's forward does.
        per_type = {
            kind: {
                "attention_mask": attention_mask(
                    kind, self.model.config, hidden_BxSxd, slot_ids, first_position, padding_mask
                ),
                **self._block_kwargs(hidden_BxSxd, slot_ids if position_ids is None else position_ids, kind),
            }
            for kind in sorted(set(types[start:end]))
        }
        hidden = hidden_BxSxd
        with torch.set_grad_enabled(grad):
            for layer in range(start, end):
                output = self.blocks[layer](
                    hidden,
                    use_cache=key_values is not None,
                    **{self._cache_keyword: key_values},
                    **per_type[types[layer]],
                )
                hidden = output[0] if isinstance(output, tuple) else output
        return hidden

    def lowest_block(self, parameters: list[torch.Tensor]) -> int | None:
        """The lowest block holding one of ``parameters`` (by identity): ``run_layers`` from there on
        recomputes all they change. None when one lies outside every block (embeddings, final norm,
        unembedding) or the family has no layer-range forward; ``n_layers`` for no parameters."""
        owner = {id(own): layer for layer, block in enumerate(self.blocks) for own in block.parameters()}
        layers = [owner.get(id(parameter)) for parameter in parameters]
        if None in layers or not self.supports_layer_ranges:
            return None
        return min(layers, default=self.n_layers)

    def describe(self) -> dict[str, object]:
        """Facts worth logging next to results: family, layers, norm type and eps."""
        norm = self.final_norm
        return {
            # The model's own type: one adapter serves several families (Qwen2 is not Llama).
            "family": getattr(self.model.config, "model_type", self.families[0]),
            "n_layers": self.n_layers,
            "final_norm": type(norm).__name__,
            "final_norm_eps": float(getattr(norm, "eps", getattr(norm, "variance_epsilon", float("nan")))),
            "final_norm_bias": getattr(norm, "bias", None) is not None,
            "d_model": int(self.unembedding.shape[1]),
            "vocab_size": int(self.unembedding.shape[0]),
        }


class GPT2Adapter(ArchitectureAdapter):
    """GPT-2: Conv1D ``mlp.c_fc`` / ``mlp.c_proj`` store W as (in, out)."""

    families = ("gpt2",)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.h

    def ff1_sites(self, layer: int) -> tuple[LinearSite, ...]:
        return (LinearSite(layer, "ff1", self.blocks[layer].mlp.c_fc, "in_out"),)

    def ff2_site(self, layer: int) -> LinearSite:
        return LinearSite(layer, "ff2", self.blocks[layer].mlp.c_proj, "in_out")

    def attention(self, layer: int) -> nn.Module:
        return self.blocks[layer].attn

    def attention_projections(self, layer: int) -> tuple[Projection, ...]:
        attn = self.blocks[layer].attn
        if getattr(attn, "is_cross_attention", False):
            raise NotImplementedError("GPT-2 cross-attention (q_attn) is not a decoder-only block")
        # c_attn's output is split into contiguous thirds: query, key, value (GPT2Attention.forward).
        fused = LinearSite(layer, "attn_qkv", attn.c_attn, "in_out")
        d = attn.embed_dim
        return (
            Projection("q", fused, ((0, d),)),
            Projection("k", fused, ((d, 2 * d),)),
            Projection("v", fused, ((2 * d, 3 * d),)),
            Projection("o", LinearSite(layer, "attn_o", attn.c_proj, "in_out")),
        )

    def mlp(self, layer: int) -> nn.Module:
        return self.blocks[layer].mlp

    @property
    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    def residual_input(self, token_embeddings_BxSxd: torch.Tensor, first_position: int = 0) -> torch.Tensor:
        # GPT-2 adds learned absolute position embeddings before block 0.
        positions = torch.arange(
            first_position, first_position + token_embeddings_BxSxd.shape[1], device=token_embeddings_BxSxd.device
        )
        return token_embeddings_BxSxd + self.model.transformer.wpe(positions)[None]


class GatedMLPAdapter(ArchitectureAdapter):
    """Llama / Gemma / Mistral / Qwen2: ``nn.Linear`` gate_proj, up_proj, down_proj (out, in)."""

    families = ("llama", "gemma", "gemma2", "gemma3_text", "mistral", "qwen2")

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.model.layers

    def ff1_sites(self, layer: int) -> tuple[LinearSite, ...]:
        mlp = self.blocks[layer].mlp
        return (
            LinearSite(layer, "ff1_gate", mlp.gate_proj, "out_in"),
            LinearSite(layer, "ff1_up", mlp.up_proj, "out_in"),
        )

    def ff2_site(self, layer: int) -> LinearSite:
        return LinearSite(layer, "ff2", self.blocks[layer].mlp.down_proj, "out_in")

    def attention(self, layer: int) -> nn.Module:
        return self.blocks[layer].self_attn

    def attention_projections(self, layer: int) -> tuple[Projection, ...]:
        # Separate nn.Linear maps; with grouped-query attention k_proj and v_proj have
        # num_key_value_heads * head_dim output rows, fewer than q_proj.
        attn = self.blocks[layer].self_attn
        return tuple(
            Projection(name, LinearSite(layer, f"attn_{name}", module, "out_in"))
            for name, module in zip(PROJECTIONS, (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        )

    def mlp(self, layer: int) -> nn.Module:
        return self.blocks[layer].mlp

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    # Families whose blocks run as a layer range (tests/test_run_layers.py). Gemma 1/2 scale the
    # embeddings by sqrt(d) in the model's forward, not in the embedding, so residual_input would
    # need the factor; no tiny model checks them, so they run whole-model paths only.
    _LAYER_RANGE_FAMILIES: ClassVar[tuple[str, ...]] = ("llama", "mistral", "qwen2", "gemma3_text")

    @property
    def input_embedding_scale(self) -> float:
        # The factor as the embedding's forward applies it: in the weights' dtype (bf16 rounds sqrt(d)).
        scale = getattr(self.model.get_input_embeddings(), "embed_scale", None)
        return 1.0 if scale is None else float(scale.to(self.input_embedding.dtype))

    def attention_types(self) -> tuple[str, ...]:
        config = self.model.config
        if config.model_type not in self._LAYER_RANGE_FAMILIES:
            raise NotImplementedError(
                f"run_layers supports {', '.join(self._LAYER_RANGE_FAMILIES)}, not model_type={config.model_type!r}; "
                "extend GatedMLPAdapter for it"
            )
        if getattr(config, "use_bidirectional_attention", False):
            raise NotImplementedError("run_layers: bidirectional Gemma 3 (an embedding model) is not causal")
        types = getattr(config, "layer_types", None)
        if types is None:
            # Mistral has no layer_types: a set sliding_window applies to every layer.
            kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
            types = (kind,) * self.n_layers
        return tuple(types)

    def _block_kwargs(
        self, hidden_BxSxd: torch.Tensor, position_ids_1xS: torch.Tensor, attention_type: str
    ) -> dict[str, object]:
        rotary = self.model.model.rotary_emb
        # Gemma 3 keeps a rotary table per layer type (local base 1e4, global 1e6); the others one.
        if getattr(rotary, "layer_types", None) is not None:
            position_embeddings = rotary(hidden_BxSxd, position_ids_1xS, attention_type)
        else:
            position_embeddings = rotary(hidden_BxSxd, position_ids=position_ids_1xS)
        return {"position_embeddings": position_embeddings, "position_ids": position_ids_1xS}


class GPTNeoXAdapter(ArchitectureAdapter):
    """GPT-NeoX / Pythia: ``nn.Linear`` dense_h_to_4h / dense_4h_to_h (out, in), untied unembedding.

    With ``use_parallel_residual`` attention and MLP both read the block's input stream and
    the block adds both outputs to it, so the attention output never reaches this block's MLP;
    patching either output (tracing) or adding to the MLP output (MEMIT) still moves the block
    output by exactly that amount.
    """

    families = ("gpt_neox",)
    _cache_keyword = "layer_past"

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.gpt_neox.layers

    def ff1_sites(self, layer: int) -> tuple[LinearSite, ...]:
        return (LinearSite(layer, "ff1", self.blocks[layer].mlp.dense_h_to_4h, "out_in"),)

    def ff2_site(self, layer: int) -> LinearSite:
        return LinearSite(layer, "ff2", self.blocks[layer].mlp.dense_4h_to_h, "out_in")

    def attention(self, layer: int) -> nn.Module:
        return self.blocks[layer].attention

    def attention_projections(self, layer: int) -> tuple[Projection, ...]:
        # query_key_value's output is viewed as (heads, 3 * head_size) and each head's block
        # chunked into q, k, v (GPTNeoXAttention.forward): the parts interleave per head.
        attn = self.blocks[layer].attention
        fused = LinearSite(layer, "attn_qkv", attn.query_key_value, "out_in")
        n_heads = self.model.config.num_attention_heads
        return (
            *(Projection(name, fused, head_interleaved_ranges(n_heads, attn.head_size, part))
              for part, name in enumerate(PROJECTIONS[:3])),
            Projection("o", LinearSite(layer, "attn_o", attn.dense, "out_in")),
        )

    def mlp(self, layer: int) -> nn.Module:
        return self.blocks[layer].mlp

    @property
    def final_norm(self) -> nn.Module:
        return self.model.gpt_neox.final_layer_norm

    def _block_kwargs(
        self, hidden_BxSxd: torch.Tensor, position_ids_1xS: torch.Tensor, attention_type: str
    ) -> dict[str, object]:
        # The layers do not compute rotary (partial: rotary_pct of each head) themselves;
        # GPTNeoXModel.forward does, once for all of them, so a layer-range forward must too.
        position_embeddings = self.model.gpt_neox.rotary_emb(hidden_BxSxd, position_ids=position_ids_1xS)
        return {"position_embeddings": position_embeddings, "position_ids": position_ids_1xS}


_ADAPTERS: tuple[type[ArchitectureAdapter], ...] = (GPT2Adapter, GatedMLPAdapter, GPTNeoXAdapter)


def supported_families() -> list[str]:
    return sorted(family for cls in _ADAPTERS for family in cls.families)


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """Pick the adapter from ``model.config.model_type``; the single entry point for every family."""
    model_type = getattr(model.config, "model_type", None)
    for adapter_class in _ADAPTERS:
        if model_type in adapter_class.families:
            return adapter_class(model)
    raise UnsupportedArchitectureError(
        f"no architecture adapter for model_type={model_type!r} ({type(model).__name__}); supported: "
        f"{', '.join(supported_families())}. Add an ArchitectureAdapter subclass to _ADAPTERS in "
        "backlens/models/adapters.py"
    )
