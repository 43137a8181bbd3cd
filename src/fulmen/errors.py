"""fulmen's exceptions: one family, each message says what was wrong and what to write instead.

Every error fulmen raises on purpose derives from :class:`FulmenError`, so a caller can catch them
all with one ``except``.

Example::

    try:
        trainer.fit(model)
    except fulmen.errors.FulmenError as err:
        print("fix the set-up:", err)
"""


class FulmenError(Exception):
    """Base of every error fulmen raises on purpose.

    Example::

        try:
            trainer.fit(model)
        except FulmenError as err:  # any misuse fulmen detected, each with a message naming the fix
            print(err)
    """


class MisconfigurationException(FulmenError, ValueError):
    """A flag, hook or return value is not usable as given; the message names the fix.

    Lightning's name is kept so ``except MisconfigurationException`` in ported code still works.

    Example::

        try:
            fulmen.Trainer(max_epochs=-5)
        except MisconfigurationException as err:
            print(err)  # names the flag and the values it accepts
    """


class LegacyAPIError(MisconfigurationException, NotImplementedError):
    """A Lightning 1.x hook, signature or flag that 2.x removed; the message gives the 2.x way.

    Also a ``NotImplementedError``, what Lightning raises for its removed epoch-end hooks.

    Example::

        class Old(fulmen.LightningModule):
            def training_epoch_end(self, outputs):  # 1.x; 2.x uses on_train_epoch_end
                ...

        trainer.fit(Old())  # LegacyAPIError: ... names on_train_epoch_end and how to keep the outputs
    """


class CheckpointError(FulmenError):
    """A checkpoint cannot be written or read: missing, corrupt, or not a fulmen/Lightning checkpoint.

    Example::

        try:
            trainer.fit(model, ckpt_path="missing.ckpt")
        except CheckpointError as err:
            print(err)  # says which file and what was wrong with it
    """


class CheckpointCorruptedError(CheckpointError):
    """A checkpoint file is damaged: cut short, empty, or with bytes that do not match its checksum.

    The message names the file and what is wrong. ``ckpt_path="last"`` skips such files.

    Example::

        try:
            model = MyModel.load_from_checkpoint("runs/epoch=9.ckpt")
        except CheckpointCorruptedError:
            model = MyModel.load_from_checkpoint("runs/epoch=8.ckpt")  # an earlier file of the same run
    """


class CheckpointSaveError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, permission denied, a path that is a file ...).

    The message names the path and the cause; earlier checkpoints are left as they were. Also an
    ``OSError``, so ``except OSError`` keeps working.

    Example::

        try:
            trainer.save_checkpoint("/read-only/run.ckpt")
        except CheckpointSaveError as err:
            print(err)  # names the path and the cause, e.g. permission denied
    """


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint holds pickled objects beyond plain tensors and containers.

    Loading it would run arbitrary code. Pass ``weights_only=False`` (or ``trusted=True``) only for files
    you created yourself or otherwise trust.

    Example::

        try:
            model = MyModel.load_from_checkpoint("downloaded.ckpt")
        except UntrustedCheckpointError:
            model = MyModel.load_from_checkpoint("downloaded.ckpt", weights_only=False)  # only if you trust it
    """


class NonFiniteLossError(FulmenError, ArithmeticError):
    """The training loss became NaN or infinite; the message names the step and how to find or skip it.

    Example::

        try:
            trainer.fit(model)
        except NonFiniteLossError as err:
            print(err)  # e.g. lower the learning rate, clip gradients, or run with detect_anomaly=True
    """


class TrainingSpikeException(FulmenError, RuntimeError):
    """``SpikeDetection`` met a loss spike and stopped the run (Lightning's name; also a ``RuntimeError``).

    ``batch_idx`` is the batch of the epoch where the loss jumped. The batches to leave out are in the
    callback's ``exclude_batches_path`` file; ``SpikeDetection(recover=True)`` rolls back and skips them
    in the same process instead.

    Example::

        try:
            trainer.fit(model)
        except TrainingSpikeException as err:
            print(err.batch_idx)  # skip_batches.json lists it and the batch before it
    """

    def __init__(self, batch_idx: int, *args: object) -> None:
        self.batch_idx = batch_idx
        super().__init__(*(args or (f"The training loss spiked at batch {batch_idx}.",)))


class SpikeRecoveryLimitError(TrainingSpikeException):
    """``SpikeDetection(recover=True)`` met more spikes than ``max_recoveries`` allows; the run ends.

    Example::

        try:
            trainer.fit(model)
        except SpikeRecoveryLimitError as err:
            print(err)  # says how many recoveries ran and what to change (learning rate, clipping, the limit)
    """


class MissingDependencyError(FulmenError, ImportError):
    """An optional feature was used without its extra installed; the message gives the install command.

    Example::

        try:
            logger = fulmen.loggers.WandbLogger()
        except MissingDependencyError as err:
            print(err)  # ... Install it with: pip install 'fulmen[wandb]'
    """


def missing_extra(package: str, extra: str, feature: str) -> MissingDependencyError:
    """Build the error for an optional dependency that is not installed.

    Example::

        try:
            import tensorboard
        except ImportError:
            raise missing_extra("tensorboard", "tensorboard", "TensorBoardLogger") from None
    """
    return MissingDependencyError(
        f"{feature} needs the package `{package}`, which is not installed. "
        f"Install it with: pip install 'fulmen[{extra}]'  (or: pip install {package})"
    )


class UnknownArgumentError(MisconfigurationException, TypeError):
    """An argument name that does not exist; the message suggests the closest valid one.

    Also a ``TypeError``, like Python's own error for an unexpected keyword argument.

    Example::

        try:
            fulmen.Trainer(max_epoch=3)
        except UnknownArgumentError as err:
            print(err)  # suggests max_epochs
    """


class ArgumentTypeError(MisconfigurationException, TypeError):
    """An argument is missing or of the wrong kind (a plain ``nn.Module`` where a ``LightningModule`` is needed).

    Also a ``TypeError``, what Lightning (and Python) raise here, so ``except TypeError`` in ported code still works.

    Example::

        try:
            trainer.fit(torch.nn.Linear(4, 2))
        except ArgumentTypeError as err:
            print(err)  # says to subclass fulmen.LightningModule
    """


class MonitorNotFoundError(MisconfigurationException, RuntimeError):
    """A callback monitors a metric that was not logged; the message lists the metrics that were.

    Also a ``RuntimeError``, the type Lightning raises here, so ``except RuntimeError`` in ported code still works.

    Example::

        early_stopping = EarlyStopping(monitor="val_los")  # a typo: the module logs "val_loss"
        try:
            fulmen.Trainer(callbacks=[early_stopping]).fit(model, train_loader, val_loader)
        except MonitorNotFoundError as err:
            print(err)  # lists the metrics that were logged, val_loss among them
    """


class EmptyLoaderError(MisconfigurationException, RuntimeError):
    """A data loader yields no batch on this process while the other processes' loaders do, so the processes
    would wait on each other forever. A ``RuntimeError`` as in Lightning.

    Example::

        try:
            has_len_all_ranks(loader, trainer.strategy)
        except EmptyLoaderError as err:
            print(err)  # names the loader and how to give every process at least one batch
    """


class SIGTERMException(SystemExit):
    """How a fit ends after SIGTERM (or SLURM's requeue signal): a ``SystemExit`` (Lightning's name).

    Raised at the optimizer step after the signal, once a resumable checkpoint is written; ``on_exception``
    hooks receive it. Uncaught, the process exits with status ``128 + signal number`` (143 for SIGTERM),
    so a scheduler sees a job that did not finish; ``trainer.fit(..., ckpt_path="last")`` continues it.

    Example::

        try:
            trainer.fit(model, loader, ckpt_path="last")
        except fulmen.errors.SIGTERMException:
            cleanup()
            raise
    """


class _TunerExitException(Exception):
    """Raised by a tuner callback once its search inside ``trainer.fit`` is done: the Trainer stops cleanly."""
