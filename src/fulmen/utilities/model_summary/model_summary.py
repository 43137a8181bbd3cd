"""Lightning's path for ``ModelSummary`` objects and ``summarize``; they live in :mod:`fulmen.summary`.

Example::

    from fulmen.utilities.model_summary.model_summary import ModelSummary

    summary = ModelSummary(model, max_depth=1)
    summary.layer_names, summary.param_nums, summary.trainable_parameters
    print(summary)
"""

from fulmen.summary import (NOT_APPLICABLE, UNKNOWN_SIZE, LayerSummary, ModelSummary, format_summary_table,
                            get_formatted_model_size, get_human_readable_count, parse_batch_shape)
from fulmen.summary import model_summary as summarize

__all__ = [
    "NOT_APPLICABLE", "UNKNOWN_SIZE", "LayerSummary", "ModelSummary", "format_summary_table", "get_formatted_model_size",
    "get_human_readable_count", "parse_batch_shape", "summarize",
]
