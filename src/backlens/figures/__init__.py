"""Figure renderers. Each reads only result tables and never loads a model."""
