"""The Backward Lens tables by name: one list, read by the API (``api.lens``) and by the workflow
(workflow/rules/common.smk), which must not import torch to learn them."""

# The backward_lens stage's five tables, then the logit-lens tables of the Fig 4 stage.
GRADIENT_TABLES = ("gradient_ranks", "vjp_norms", "target_ranks", "neuron_updates", "vjp_similarity")
LENS_TABLES = ("lens_cells", "lens_tokens")
# Beyond the paper (issue 16): the same views of the attention projections W_Q, W_K, W_V, W_O.
ATTENTION_TABLES = ("attention_ranks", "attention_vjp_norms", "attention_target_ranks")
ALL_TABLES = GRADIENT_TABLES + LENS_TABLES + ATTENTION_TABLES
DEFAULT_TABLES = ("gradient_ranks", "vjp_norms", "target_ranks", *LENS_TABLES)
