"""Lightning's module path for the trainer's state enums (``fulmen.trainer.states``); they live in
:mod:`fulmen.trainer.state` beside the resumable loop state.

Example::

    from fulmen.trainer.states import RunningStage, TrainerFn, TrainerState, TrainerStatus

    if trainer.state.fn == TrainerFn.FITTING and trainer.state.stage == RunningStage.VALIDATING:
        ...
"""

from fulmen.trainer.state import RunningStage, TrainerFn, TrainerState, TrainerStatus

__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]
