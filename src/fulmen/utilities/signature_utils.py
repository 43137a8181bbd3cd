"""Whether a hook's signature takes a given argument: how optional hook arguments are decided once per run.

Example::

    from fulmen.utilities.signature_utils import is_param_in_hook_signature

    is_param_in_hook_signature(model.training_step, "batch_idx")
"""

from fulmen._lightning_utils import is_param_in_hook_signature

__all__ = ["is_param_in_hook_signature"]
