"""Knobs of controller-managed deployment-scoped actors (``RAY_SERVE_*`` env)."""

from ray.serve._private.constants_utils import (
    get_env_float_positive,
    get_env_int_positive,
)

# KV store key of the controller's checkpoint of runtime-created deployment
# actors (what recovery needs to find and recreate them).
DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY = "serve-deployment-scoped-actors-checkpoint"

# Longest allowed deployment actor name (the part the caller chooses).
MAX_DEPLOYMENT_SCOPED_ACTOR_NAME_LENGTH = 128

# Consecutive failed starts (constructor raised, actor died before it was
# ready) after which the controller stops recreating the actor and reports it
# FAILED. Asking for it again through the API starts a new round of attempts.
DEPLOYMENT_SCOPED_ACTOR_MAX_START_ATTEMPTS = get_env_int_positive(
    "RAY_SERVE_DEPLOYMENT_SCOPED_ACTOR_MAX_START_ATTEMPTS", 5
)

# Exponential backoff between recreation attempts: first delay and cap.
DEPLOYMENT_SCOPED_ACTOR_RESTART_BACKOFF_S = get_env_float_positive(
    "RAY_SERVE_DEPLOYMENT_SCOPED_ACTOR_RESTART_BACKOFF_S", 0.5
)
DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S = get_env_float_positive(
    "RAY_SERVE_DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S", 30.0
)
