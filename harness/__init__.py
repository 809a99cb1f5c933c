"""`harness`: the LoRA-RLHF experiment harness (CLI, presets, the grid, dispatch and report)."""
