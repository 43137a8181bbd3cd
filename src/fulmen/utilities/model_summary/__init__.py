"""Lightning's path for model summaries: ``ModelSummary`` objects and ``summarize``.

Example::

    from fulmen.utilities.model_summary import summarize

    summary = summarize(model, max_depth=2)
    summary.total_parameters, summary.layer_names
"""

from fulmen.summary import (LayerSummary, ModelSummary, get_formatted_model_size, get_human_readable_count,
                            parse_batch_shape)
from fulmen.summary import model_summary as summarize

__all__ = [
    "LayerSummary", "ModelSummary", "get_formatted_model_size", "get_human_readable_count", "parse_batch_shape",
    "summarize",
]
