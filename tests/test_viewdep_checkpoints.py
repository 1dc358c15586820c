"""View-dependent colour options and checkpoints (placeholder: filled in below)."""
from launch_helpers import build_tiny

OVERRIDES = [
    "system.prompt_processor.prompt=a cat", "trainer.enable_progress_bar=false",
    "data.width=[8,12]", "data.height=[8,12]", "data.resolution_milestones=[6]",
    "data.n_val_views=1", "data.eval_height=8", "data.eval_width=8", "trainer.val_check_interval=100",
    "system.renderer.num_samples_per_ray=16",
    "system.renderer.grid_update_interval=3", "system.renderer.grid_warmup_steps=2",
    "system.guidance.min_step_percent=[0,0.98,0.02,8]", "system.guidance.max_step_percent=[0,0.98,0.5,8]",
]
N = 4


def build(trial_dir, extra=()):
    return build_tiny(trial_dir, OVERRIDES + list(extra))
