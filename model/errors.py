"""The model's errors, in one torch-free place so that request validation, output geometry and
checkpoint description can raise them without loading torch."""


class InvalidRequest(ValueError):
    """The request cannot be rendered as given; retrying will not help."""


class StageResultError(InvalidRequest):
    """Bytes that are not a stage result, or a stage result that does not fit the request or model
    it should start (`model.stages`). Retrying will not help; rendering that stage again will."""


class RenderCancelled(RuntimeError):
    """should_stop() returned True between two steps."""


class CheckpointError(ValueError):
    """A checkpoint folder is missing, partial, mis-shaped or in a refused format."""


class AdapterError(InvalidRequest):
    """An adapter is malformed or does not fit this model (fingerprint, stage, target, shape)."""
