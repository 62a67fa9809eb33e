"""Knowledge editing on CounterFact: forward pass shift and the FT / ROME / MEMIT / MEND baselines."""
