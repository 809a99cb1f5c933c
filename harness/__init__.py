"""`harness`: the LoRA-RLHF experiment harness (CLI, presets, and later the grid, dispatch and report)."""
