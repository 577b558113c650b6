"""Unit tests for controller-managed deployment-scoped actors.

Covers ``DeploymentScopedActorManager`` (in
``ray.serve._private.deployment_scoped_actors``) through its hooks in a real
``DeploymentStateManager``: creation, checkpointing, readiness, health checks
and recreation, bounded restarts, cleanup on deployment deletion and shutdown,
recovery after a controller restart, visibility, and the Ray actor naming
scheme.

Ray is never started: replicas use ``MockReplicaActorWrapper`` and the
runtime-created actors use ``MockScopedActorWrapper`` below, which simulates
the named actors of a cluster in ``fake_cluster``.
"""

import itertools
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple
from unittest.mock import patch

import pytest

import ray
from ray import cloudpickle
from ray._raylet import NodeID
from ray.serve._private.autoscaling_state import AutoscalingStateManager
from ray.serve._private.common import (
    DeploymentID,
    DeploymentStatus,
    ReplicaID,
    ReplicaState,
)
from ray.serve._private.config import DeploymentConfig, ReplicaConfig
from ray.serve._private.constants import (
    DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S,
    SERVE_CONTROLLER_NAME,
    SERVE_DEPLOYMENT_ACTOR_PREFIX,
    SERVE_NAMESPACE,
)
from ray.serve._private.deployment_info import DeploymentInfo
from ray.serve._private.deployment_scoped_actor_constants import (
    DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY,
    MAX_DEPLOYMENT_SCOPED_ACTOR_NAME_LENGTH,
)
from ray.serve._private.deployment_scoped_actor_utils import (
    ActorClassReference,
    get_deployment_scoped_actor_name,
    parse_deployment_scoped_actor_name,
    split_actor_class,
    to_actor_class_reference,
    validate_deployment_scoped_actor_name,
)
from ray.serve._private.deployment_scoped_actors import DeploymentScopedActorWrapper
from ray.serve._private.deployment_state import (
    CHECKPOINT_KEY,
    DeploymentStateManager,
)
from ray.serve._private.exceptions import DeploymentIsBeingDeletedError
from ray.serve._private.test_utils import (
    MockClusterNodeInfoCache,
    MockDeploymentActorWrapper,
    MockKVStore,
    MockReplicaActorWrapper,
    MockTimer,
    dead_replicas_context,
    replica_rank_context,
)
from ray.serve._private.utils import get_deployment_actor_name
from ray.serve.config import DeploymentActorConfig
from ray.serve.exceptions import RayServeException

SCOPED_ACTORS_MODULE = "ray.serve._private.deployment_scoped_actors"

TEST_DEPLOYMENT_ID = DeploymentID(name="test_deployment", app_name="test_app")
TEST_DEPLOYMENT_ID_2 = DeploymentID(name="test_deployment_2", app_name="test_app")


@ray.remote
class PrefixTree:
    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


@ray.remote
class OtherActor:
    pass


def _class_path(actor_class) -> str:
    """``module:qualname`` of the class behind a Ray actor class."""
    cls = actor_class.__ray_actor_class__
    return f"{cls.__module__}:{cls.__qualname__}"


# --------------------------------------------------------------------------- #
# A fake cluster of named actors and the wrapper the manager drives.
# --------------------------------------------------------------------------- #


class FakeActorID:
    def __init__(self, hex_id: str):
        self._hex = hex_id

    def hex(self) -> str:
        return self._hex


class FakeActorHandle:
    """Stands in for the ``ActorHandle`` of a runtime-created actor."""

    def __init__(self, ray_name: str, hex_id: str):
        self.ray_name = ray_name
        self._actor_id = FakeActorID(hex_id)

    def __repr__(self) -> str:
        return f"FakeActorHandle({self.ray_name!r}, {self._actor_id.hex()})"


@dataclass
class FakeCluster:
    """Named actors alive in the serve namespace, and what was done to them."""

    # Ray actor name -> handle of the live actor of that name.
    live: Dict[str, FakeActorHandle] = field(default_factory=dict)
    # Every successful `start()`, in order.
    started: List["MockScopedActorWrapper"] = field(default_factory=list)
    # Names passed to `lookup` / `kill_by_name`, in order.
    looked_up: List[str] = field(default_factory=list)
    killed_by_name: List[str] = field(default_factory=list)
    # Ray names whose constructor raises (the actor dies before it is ready).
    failing_constructors: Set[str] = field(default_factory=set)
    # Ray names whose `start()` fails (e.g. the class cannot be loaded).
    failing_starts: Set[str] = field(default_factory=set)
    # ("put", key) and ("start", ray_name) events, in order.
    events: List[Tuple[str, str]] = field(default_factory=list)
    next_id: int = 1

    def spawn(self, ray_name: str) -> FakeActorHandle:
        """A new handle with a distinct actor ID (not yet registered as live)."""
        handle = FakeActorHandle(ray_name, f"{self.next_id:032x}")
        self.next_id += 1
        return handle

    def reset(self) -> None:
        """Forget every actor and every recorded call."""
        self.__dict__.update(FakeCluster().__dict__)

    def starts_of(self, ray_name: str) -> List["MockScopedActorWrapper"]:
        """Every successful start of the actor of that Ray name."""
        return [w for w in self.started if w._actor_name == ray_name]

    def scoped_events(self) -> List[Tuple[str, str]]:
        """Actor starts and writes of the runtime-actor checkpoint, in order."""
        return [
            event
            for event in self.events
            if event[0] == "start"
            or event[1] == DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY
        ]


fake_cluster = FakeCluster()


class MockScopedActorWrapper(MockDeploymentActorWrapper):
    """``DeploymentScopedActorWrapper`` over ``fake_cluster`` instead of Ray."""

    def __init__(
        self,
        deployment_id: DeploymentID,
        config,
        code_version: str = "",
        recovered_handle: Optional[FakeActorHandle] = None,
    ):
        super().__init__(deployment_id, config, code_version, recovered_handle)
        self._actor_name = get_deployment_scoped_actor_name(deployment_id, config.name)
        self.start_runtime_env = None
        self.health_checks_requested = 0
        self.health_checks_run = 0
        # True: a health check is due now; False: never; a float: due then.
        self.due = True
        self.looked_at = 0

    @property
    def handle(self) -> Optional[FakeActorHandle]:
        return self._handle

    @property
    def actor_id(self) -> Optional[str]:
        return self._handle._actor_id.hex() if self._handle is not None else None

    def request_health_check(self) -> None:
        self.health_checks_requested += 1

    def next_health_check_at(self) -> float:
        self.looked_at += 1
        if isinstance(self.due, bool):
            return 0.0 if self.due else float("inf")
        return self.due

    def check_health(self) -> bool:
        self.health_checks_run += 1
        return super().check_health()

    def start(self, deployment_runtime_env=None):
        fake_cluster.events.append(("start", self._actor_name))
        if self._actor_name in fake_cluster.failing_starts:
            return False, "failed to load the actor class"
        self.start_runtime_env = deployment_runtime_env
        self._handle = fake_cluster.spawn(self._actor_name)
        fake_cluster.started.append(self)
        if self._actor_name in fake_cluster.failing_constructors:
            self.set_failed_to_start("constructor raised")
        else:
            fake_cluster.live[self._actor_name] = self._handle
        return True, None

    def kill(self) -> None:
        super().kill()
        if fake_cluster.live.get(self._actor_name) is self._handle:
            del fake_cluster.live[self._actor_name]

    @staticmethod
    def lookup(ray_actor_name: str) -> Optional[FakeActorHandle]:
        fake_cluster.looked_up.append(ray_actor_name)
        return fake_cluster.live.get(ray_actor_name)

    @staticmethod
    def kill_by_name(ray_actor_name: str) -> None:
        fake_cluster.killed_by_name.append(ray_actor_name)
        fake_cluster.live.pop(ray_actor_name, None)


class RecordingKVStore(MockKVStore):
    """``MockKVStore`` that records every put (to count checkpoint writes)."""

    def put(self, key: str, val) -> bool:
        fake_cluster.events.append(("put", key))
        return super().put(key, val)

    def num_puts(self, key: str = DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) -> int:
        return fake_cluster.events.count(("put", key))


# --------------------------------------------------------------------------- #
# Fixture and helpers.
# --------------------------------------------------------------------------- #


@pytest.fixture
def mock_scoped_actors_dsm():
    """Build real DeploymentStateManagers over mocks and one shared KV store.

    Like ``mock_deployment_state_manager`` in upstream's unit ``conftest.py``,
    plus the runtime-actor wrapper swapped for ``MockScopedActorWrapper`` and
    ``ray.get_actor`` / ``ray.kill`` made to fail (nothing may reach Ray).

    Yields:
        ``(create_deployment_state_manager, timer, kv_store)``. Calling
        ``create_deployment_state_manager(actor_names=[...])`` a second time
        simulates a controller restart with those named actors alive.
    """
    timer = MockTimer()
    fake_cluster.reset()
    with (
        patch(
            "ray.serve._private.deployment_state.ActorReplicaWrapper",
            new=MockReplicaActorWrapper,
        ),
        patch(
            "ray.serve._private.deployment_state.DeploymentActorWrapper",
            new=MockDeploymentActorWrapper,
        ),
        patch(
            f"{SCOPED_ACTORS_MODULE}.DeploymentScopedActorWrapper",
            new=MockScopedActorWrapper,
        ),
        patch("time.time", new=timer.time),
        patch("ray.serve._private.long_poll.LongPollHost") as mock_long_poll,
        patch("ray.get_runtime_context"),
        patch(
            "ray.get_actor", side_effect=AssertionError("unit tests must not call Ray")
        ),
        patch("ray.kill", side_effect=AssertionError("unit tests must not call Ray")),
    ):
        kv_store = RecordingKVStore()
        cluster_node_info_cache = MockClusterNodeInfoCache()
        cluster_node_info_cache.add_node(NodeID.from_random().hex())
        autoscaling_state_manager = AutoscalingStateManager()

        def create_deployment_state_manager(
            actor_names: Optional[List[str]] = None,
        ) -> DeploymentStateManager:
            return DeploymentStateManager(
                kv_store,
                mock_long_poll,
                actor_names or [],
                [],
                cluster_node_info_cache,
                autoscaling_state_manager,
                head_node_id_override="fake-head-node-id",
            )

        yield create_deployment_state_manager, timer, kv_store

        dead_replicas_context.clear()
        replica_rank_context.clear()
        fake_cluster.reset()


def deployment_info(
    num_replicas: int = 2,
    version: str = "1",
    ray_actor_options: Optional[Dict] = None,
) -> DeploymentInfo:
    """A minimal DeploymentInfo, as upstream's deployment_state unit tests build."""
    return DeploymentInfo(
        version=version,
        start_time_ms=0,
        actor_name="abc",
        deployment_config=DeploymentConfig(num_replicas=num_replicas),
        replica_config=ReplicaConfig.create(
            lambda x: x, ray_actor_options=ray_actor_options
        ),
        deployer_job_id="",
    )


def replicas(dsm: DeploymentStateManager, deployment_id: DeploymentID, states=None):
    """The deployment's replicas (``DeploymentReplica``), optionally by state."""
    return dsm._deployment_states[deployment_id]._replicas.get(states)


def deploy_running(
    dsm: DeploymentStateManager,
    deployment_id: DeploymentID = TEST_DEPLOYMENT_ID,
    num_replicas: int = 2,
    **kwargs,
) -> None:
    """Deploy and drive the mock replicas to RUNNING (deployment HEALTHY)."""
    dsm.deploy(deployment_id, deployment_info(num_replicas=num_replicas, **kwargs))
    dsm.update()
    for replica in replicas(dsm, deployment_id):
        replica._actor.set_ready()
    dsm.update()
    assert len(replicas(dsm, deployment_id, [ReplicaState.RUNNING])) == num_replicas
    assert status(dsm, deployment_id) == DeploymentStatus.HEALTHY


def status(dsm: DeploymentStateManager, deployment_id: DeploymentID):
    """The deployment's current ``DeploymentStatus``."""
    return dsm.get_deployment_statuses([deployment_id])[0].status


def get_or_create(
    dsm: DeploymentStateManager,
    name: str = "tree",
    actor_class=PrefixTree,
    deployment_id: DeploymentID = TEST_DEPLOYMENT_ID,
    args: Tuple = (),
    kwargs: Optional[Dict] = None,
):
    """Call the DeploymentStateManager hook the controller's API calls.

    Args:
        dsm: The DeploymentStateManager.
        name: The actor's name within the deployment.
        actor_class: The class to create the actor from.
        deployment_id: The deployment the actor belongs to.
        args: Constructor arguments.
        kwargs: Constructor keyword arguments.

    Returns:
        The handle the controller would return to the caller.
    """
    return dsm.get_or_create_deployment_actor(
        deployment_id, name, actor_class, args, kwargs or {}
    )


def wrapper_of(
    dsm: DeploymentStateManager,
    name: str = "tree",
    deployment_id: DeploymentID = TEST_DEPLOYMENT_ID,
) -> Optional[MockScopedActorWrapper]:
    """The wrapper the manager currently tracks for (deployment, name)."""
    return dsm._scoped_actors._wrapper(deployment_id, name)


def details(
    dsm: DeploymentStateManager, deployment_id: DeploymentID = TEST_DEPLOYMENT_ID
):
    """``DeploymentActorDetails`` of the deployment's actors, by name."""
    return {
        d.name: d for d in dsm.get_deployment_details(deployment_id).deployment_actors
    }


def checkpointed(kv_store: MockKVStore) -> Optional[Dict[DeploymentID, Dict]]:
    """The runtime-actor checkpoint: {deployment_id: {name: config}}, or None."""
    raw = kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY)
    return cloudpickle.loads(raw) if raw is not None else None


def ray_name(name: str = "tree", deployment_id=TEST_DEPLOYMENT_ID) -> str:
    """The Ray actor name of the deployment's runtime-created actor."""
    return get_deployment_scoped_actor_name(deployment_id, name)


def replica_names(dsm: DeploymentStateManager, deployment_id: DeploymentID):
    """Ray actor names of the deployment's replicas (live across a restart)."""
    return [r.replica_id.to_full_id_str() for r in replicas(dsm, deployment_id)]


def make_running(dsm: DeploymentStateManager, name: str = "tree", **kwargs):
    """Mark the tracked wrapper ready and run one control loop step."""
    wrapper = wrapper_of(dsm, name, **kwargs)
    wrapper.set_ready()
    dsm.update()
    return wrapper


# --------------------------------------------------------------------------- #
# get_or_create
# --------------------------------------------------------------------------- #


def test_get_or_create_is_idempotent(mock_scoped_actors_dsm):
    """Asking twice returns the same handle and starts the actor once."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    handle = get_or_create(dsm, args=(1,), kwargs={"k": "v"})
    assert isinstance(handle, FakeActorHandle)
    assert handle.ray_name == "SERVE_DEPLOYMENT_ACTOR::test_app::test_deployment::tree"
    assert len(fake_cluster.starts_of(ray_name())) == 1

    # Later calls ignore their arguments and return the live actor.
    assert get_or_create(dsm, args=(2,), kwargs={"k": "other"}) is handle
    make_running(dsm)
    assert get_or_create(dsm) is handle

    assert len(fake_cluster.starts_of(ray_name())) == 1
    assert fake_cluster.started[0]._config.init_args == (1,)
    assert fake_cluster.started[0]._config.init_kwargs == {"k": "v"}
    # A repeated request makes the controller verify the actor soon.
    assert wrapper_of(dsm).health_checks_requested == 2
    assert kv_store.num_puts() == 1


def test_actor_inherits_deployment_runtime_env(mock_scoped_actors_dsm):
    """The actor is started with its deployment's runtime_env."""
    create_dsm, _, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    runtime_env = {"env_vars": {"MODEL": "m1"}}
    deploy_running(dsm, ray_actor_options={"runtime_env": runtime_env})

    get_or_create(dsm)

    assert wrapper_of(dsm).start_runtime_env == runtime_env


def test_actor_options_come_from_the_class(mock_scoped_actors_dsm):
    """Options of ``Cls.options(...)`` are kept, controller-owned ones dropped."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    get_or_create(
        dsm,
        actor_class=PrefixTree.options(
            num_cpus=0.5, max_concurrency=4, name="mine", lifetime=None
        ),
    )

    config = checkpointed(kv_store)[TEST_DEPLOYMENT_ID]["tree"]
    assert config.actor_options == {"num_cpus": 0.5, "max_concurrency": 4}
    assert config.actor_class == _class_path(PrefixTree)


class PlainActor:
    pass


def test_plain_class_is_accepted(mock_scoped_actors_dsm):
    """A plain class works and matches its ``ray.remote`` version afterwards."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    handle = get_or_create(dsm, actor_class=PlainActor)

    config = checkpointed(kv_store)[TEST_DEPLOYMENT_ID]["tree"]
    assert config.actor_class == f"{PlainActor.__module__}:PlainActor"
    assert get_or_create(dsm, actor_class=ray.remote(PlainActor)) is handle
    assert len(fake_cluster.started) == 1


def test_actor_class_reference_is_small_and_resolves():
    """``options()`` wrappers of importable classes travel by name."""
    wrapper = PrefixTree.options(num_cpus=0.5, max_concurrency=4, name="mine")
    ref = to_actor_class_reference(wrapper)

    assert isinstance(ref, ActorClassReference)
    assert (ref.module, ref.attr) == (__name__, "PrefixTree")
    assert ref.options == {"num_cpus": 0.5, "max_concurrency": 4}
    assert len(cloudpickle.dumps(ref)) * 10 < len(cloudpickle.dumps(wrapper))
    assert split_actor_class(ref) == split_actor_class(wrapper)
    # The @ray.remote class itself, and ray.remote(cls).options(...).
    assert split_actor_class(to_actor_class_reference(PrefixTree)) == (PrefixTree, {})
    cls, options = split_actor_class(
        to_actor_class_reference(ray.remote(PlainActor).options(num_cpus=1))
    )
    assert cls.__ray_actor_class__ is PlainActor and options == {"num_cpus": 1}


def test_actor_class_reference_only_for_classes_importable_by_name():
    """Plain classes, local classes and by-value modules are sent as they are."""

    @ray.remote
    class Local:
        pass

    local = Local.options(num_cpus=1)
    assert to_actor_class_reference(PlainActor) is PlainActor
    assert to_actor_class_reference(local) is local
    assert to_actor_class_reference("not a class") == "not a class"
    module = sys.modules[PrefixTree.__ray_actor_class__.__module__]
    cloudpickle.register_pickle_by_value(module)
    try:
        wrapper = PrefixTree.options(num_cpus=1)
        assert to_actor_class_reference(wrapper) is wrapper
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def test_get_or_create_with_a_reference(mock_scoped_actors_dsm):
    """A reference creates what its wrapper would; either form finds the actor."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    wrapper = PrefixTree.options(num_cpus=0.5)

    handle = get_or_create(dsm, actor_class=to_actor_class_reference(wrapper))

    config = checkpointed(kv_store)[TEST_DEPLOYMENT_ID]["tree"]
    assert config.actor_class == _class_path(PrefixTree)
    assert config.actor_options == {"num_cpus": 0.5}
    assert get_or_create(dsm, actor_class=wrapper) is handle
    assert get_or_create(dsm, actor_class=to_actor_class_reference(wrapper)) is handle
    assert len(fake_cluster.started) == 1


@pytest.mark.parametrize(
    "ref",
    [
        ActorClassReference("no_such_module_60359", "Tree"),
        ActorClassReference(__name__, "NoSuchClass"),
        ActorClassReference(__name__, "TEST_DEPLOYMENT_ID"),
    ],
)
def test_unresolvable_reference_is_rejected(mock_scoped_actors_dsm, ref):
    """A reference the controller cannot import is a TypeError; nothing is left."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    with pytest.raises(TypeError, match=ref.attr):
        get_or_create(dsm, actor_class=ref)

    assert checkpointed(kv_store) is None
    assert fake_cluster.started == []
    assert wrapper_of(dsm) is None


def test_control_loop_skips_actors_with_no_health_check_due(mock_scoped_actors_dsm):
    """A step touches only actors whose health check is outstanding or due,
    and returns at once until the earliest of those (or until woken)."""
    create_dsm, _, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    get_or_create(dsm)
    wrapper = make_running(dsm)
    manager = dsm._scoped_actors
    runs = wrapper.health_checks_run

    wrapper.due = False
    wrapper.set_health_ok(False)  # would be recreated if it were checked
    for _ in range(3):
        dsm.update()
    assert wrapper.health_checks_run == runs
    assert manager._next_update_at == float("inf")
    assert details(dsm)["tree"].state == "RUNNING"

    wrapper.due = True
    dsm.update()  # nothing was due at the last step: still skipped
    assert wrapper.health_checks_run == runs
    assert dsm.get_deployment_actor_handle(TEST_DEPLOYMENT_ID, "tree") is not None
    assert manager._next_update_at == 0.0  # a lookup wakes the next step
    dsm.update()
    assert wrapper.health_checks_run == runs + 1
    assert wrapper.killed
    assert details(dsm)["tree"].state != "RUNNING"


def test_control_loop_looks_only_at_deployments_that_are_due(
    mock_scoped_actors_dsm,
):
    """With several deployments, a step looks only at those whose actors are
    due: one actor checked every step does not make each step scan the rest,
    and a lookup wakes only its own deployment."""
    create_dsm, _, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    for deployment_id in (TEST_DEPLOYMENT_ID, TEST_DEPLOYMENT_ID_2):
        deploy_running(dsm, deployment_id)
        get_or_create(dsm, deployment_id=deployment_id)
        make_running(dsm, deployment_id=deployment_id)
    first = wrapper_of(dsm)
    second = wrapper_of(dsm, deployment_id=TEST_DEPLOYMENT_ID_2)

    first.due = time.time() + 3600
    second.due = True  # checked at every step
    dsm.update()
    looked, runs = first.looked_at, second.health_checks_run
    for _ in range(3):
        dsm.update()
    assert first.looked_at == looked
    assert second.health_checks_run == runs + 3

    second.due = False
    dsm.update()
    assert dsm._scoped_actors._next_update_at == first.due
    looked_first, looked_second = first.looked_at, second.looked_at
    dsm.update()
    assert (first.looked_at, second.looked_at) == (looked_first, looked_second)

    assert dsm.get_deployment_actor_handle(TEST_DEPLOYMENT_ID_2, "tree")
    dsm.update()
    assert first.looked_at == looked_first
    assert second.looked_at > looked_second


def test_failed_create_leaves_the_control_loop_idle(mock_scoped_actors_dsm):
    """A create that fails to start leaves no (empty) record behind, so the
    control loop goes back to returning at once."""
    create_dsm, _, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    fake_cluster.failing_starts.add(ray_name())

    with pytest.raises(ValueError):
        get_or_create(dsm)
    dsm.update()

    assert dsm._scoped_actors._records == {}
    assert dsm._scoped_actors._next_update_at == float("inf")


def test_next_health_check_follows_the_period():
    """The real wrapper: at once when outstanding, unhealthy or requested,
    else one randomized period (0.9x-1.1x, drawn once per check) after the
    last check, and a check starts exactly then."""
    config = DeploymentActorConfig(name="tree", actor_class=PrefixTree)
    wrapper = DeploymentScopedActorWrapper(TEST_DEPLOYMENT_ID, config)
    wrapper._handle = object()
    period = DEPLOYMENT_ACTOR_HEALTH_CHECK_PERIOD_S
    now = time.time()
    wrapper._last_health_check_time = now - 0.5 * period

    due = wrapper.next_health_check_at()
    assert now + 0.4 * period <= due <= now + 0.6 * period
    assert all(wrapper.next_health_check_at() == due for _ in range(20))
    assert not wrapper._should_start_new_deployment_actor_health_check()
    wrapper._last_health_check_time = now - 1.2 * period
    assert wrapper.next_health_check_at() <= now
    assert wrapper._should_start_new_deployment_actor_health_check()
    draws = set()
    for i in range(20):
        wrapper._last_health_check_time = 1000.0 + i
        draws.add(round(wrapper.next_health_check_at() - (1000.0 + i), 9))
    assert len(draws) > 1  # a new draw for each check
    assert all(0.9 * period <= d <= 1.1 * period for d in draws)

    wrapper._health_check_ref = object()
    assert wrapper.next_health_check_at() == 0.0
    assert not wrapper._should_start_new_deployment_actor_health_check()
    wrapper._health_check_ref = None
    wrapper._healthy = False
    assert wrapper.next_health_check_at() == 0.0
    assert not wrapper._should_start_new_deployment_actor_health_check()
    wrapper._healthy = True
    wrapper.request_health_check()
    assert wrapper.next_health_check_at() <= time.time()
    assert wrapper._should_start_new_deployment_actor_health_check()


def test_get_deployment_actor_handle(mock_scoped_actors_dsm):
    """Routers look runtime-created actors up by (deployment, name)."""
    create_dsm, _, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    handle = get_or_create(dsm)

    assert dsm.get_deployment_actor_handle(TEST_DEPLOYMENT_ID, "tree") is handle
    assert wrapper_of(dsm).health_checks_requested == 1
    assert dsm.get_deployment_actor_handle(TEST_DEPLOYMENT_ID, "other") is None
    assert dsm.get_deployment_actor_handle(TEST_DEPLOYMENT_ID_2, "tree") is None
    assert len(fake_cluster.started) == 1


def test_different_class_under_existing_name_raises(mock_scoped_actors_dsm):
    """A different class under a taken name fails and leaves the actor alone."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    handle = get_or_create(dsm, args=(1,))
    wrapper = make_running(dsm)
    checkpoint_before = kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY)

    with pytest.raises(ValueError) as exc_info:
        get_or_create(dsm, actor_class=OtherActor)

    message = str(exc_info.value)
    assert _class_path(PrefixTree) in message
    assert _class_path(OtherActor) in message
    assert wrapper_of(dsm) is wrapper
    assert not wrapper.killed
    assert fake_cluster.killed_by_name == []
    assert len(fake_cluster.started) == 1
    assert details(dsm)["tree"].state == "RUNNING"
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) == checkpoint_before
    assert kv_store.num_puts() == 1
    assert get_or_create(dsm) is handle


@pytest.mark.parametrize("case", ["unknown", "deleting", "shutting_down"])
def test_get_or_create_refused_creates_nothing(mock_scoped_actors_dsm, case):
    """Unknown / deleting deployments and shutdown refuse without side effects."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    if case == "unknown":
        deployment_id = DeploymentID(name="missing", app_name="test_app")
        expected = ValueError
    elif case == "deleting":
        deployment_id = TEST_DEPLOYMENT_ID
        dsm.delete_deployment(deployment_id)
        dsm.update()
        expected = DeploymentIsBeingDeletedError
    else:
        deployment_id = TEST_DEPLOYMENT_ID
        dsm.shutdown()
        expected = RayServeException

    with pytest.raises(expected):
        get_or_create(dsm, deployment_id=deployment_id)

    assert fake_cluster.scoped_events() == []
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None
    assert not dsm._scoped_actors.has_actors(deployment_id)
    if case != "unknown":
        assert details(dsm) == {}


@pytest.mark.parametrize(
    "name, error",
    [
        ("", ValueError),
        ("a" * (MAX_DEPLOYMENT_SCOPED_ACTOR_NAME_LENGTH + 1), ValueError),
        ("a:b", ValueError),
        ("a::b", ValueError),
        (":", ValueError),
        ("a b", ValueError),
        (" a", ValueError),
        ("a#b", ValueError),
        ("_leading_underscore", ValueError),
        (123, TypeError),
        (None, TypeError),
        (b"tree", TypeError),
    ],
)
def test_invalid_names_are_rejected(mock_scoped_actors_dsm, name, error):
    """Invalid names raise and create nothing."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    with pytest.raises(error):
        get_or_create(dsm, name=name)
    with pytest.raises(error):
        validate_deployment_scoped_actor_name(name)

    assert fake_cluster.scoped_events() == []
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None
    assert details(dsm) == {}


@pytest.mark.parametrize(
    "name", ["a", "A", "0", "tree", "prefix_tree-v2.1", "a" * 128, "9-._"]
)
def test_valid_names_are_accepted(mock_scoped_actors_dsm, name):
    """Names up to the length limit made of [A-Za-z0-9_.-] are accepted."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    handle = get_or_create(dsm, name=name)

    assert handle.ray_name == ray_name(name)
    assert set(checkpointed(kv_store)[TEST_DEPLOYMENT_ID]) == {name}


def test_name_with_trailing_newline_is_rejected():
    """A trailing newline is not a letter, digit, '_', '-' or '.'."""
    with pytest.raises(ValueError):
        validate_deployment_scoped_actor_name("tree\n")


@pytest.mark.parametrize(
    "actor_class", ["some.module:Actor", PrefixTree.remote, 42, None]
)
def test_invalid_actor_class_is_rejected(mock_scoped_actors_dsm, actor_class):
    """Only classes, ``@ray.remote`` classes and their ``.options()`` are accepted."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    with pytest.raises(TypeError):
        get_or_create(dsm, actor_class=actor_class)

    assert fake_cluster.scoped_events() == []
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None
    assert details(dsm) == {}


def test_unserializable_arguments_raise_type_error(mock_scoped_actors_dsm):
    """Arguments that cannot be checkpointed fail before anything is recorded."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    with pytest.raises(TypeError, match="cannot be serialized"):
        get_or_create(dsm, args=(threading.Lock(),))
    with pytest.raises(TypeError, match="cannot be serialized"):
        get_or_create(dsm, kwargs={"lock": threading.Lock()})

    assert fake_cluster.scoped_events() == []
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None
    assert not dsm._scoped_actors.has_actors(TEST_DEPLOYMENT_ID)
    assert details(dsm) == {}

    # The name is still free.
    get_or_create(dsm, args=(1,))
    assert len(fake_cluster.started) == 1


def test_failed_start_leaves_no_record(mock_scoped_actors_dsm):
    """If the actor cannot even be submitted, the request fails cleanly."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    fake_cluster.failing_starts.add(ray_name())

    with pytest.raises(ValueError, match="failed to load the actor class"):
        get_or_create(dsm)

    assert details(dsm) == {}
    assert checkpointed(kv_store) == {}
    fake_cluster.failing_starts.clear()
    assert get_or_create(dsm) is wrapper_of(dsm).handle


# --------------------------------------------------------------------------- #
# Checkpoint
# --------------------------------------------------------------------------- #


def test_checkpoint_is_written_ahead_and_only_on_change(
    mock_scoped_actors_dsm,
):
    """The checkpoint is written before the actor starts, then only on change."""
    create_dsm, timer, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    get_or_create(dsm, args=(1,), kwargs={"k": "v"})

    assert fake_cluster.scoped_events() == [
        ("put", DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY),
        ("start", ray_name()),
    ]
    config = checkpointed(kv_store)[TEST_DEPLOYMENT_ID]["tree"]
    assert config.init_args == (1,)
    assert config.init_kwargs == {"k": "v"}
    assert config.actor_class == _class_path(PrefixTree)

    # Readiness, steady state and health-driven recreation change nothing
    # the checkpoint holds.
    make_running(dsm)
    for _ in range(5):
        timer.advance(10)
        dsm.update()
    wrapper_of(dsm).set_health_ok(False)
    dsm.update()
    make_running(dsm)
    get_or_create(dsm)
    assert kv_store.num_puts() == 1

    # A second actor is a change.
    get_or_create(dsm, name="other")
    assert kv_store.num_puts() == 2
    assert set(checkpointed(kv_store)[TEST_DEPLOYMENT_ID]) == {"tree", "other"}


def test_failed_checkpoint_write_does_not_leave_an_unrecorded_actor(
    mock_scoped_actors_dsm,
):
    """A KV store error on the write-ahead put must not orphan the request."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    with patch.object(kv_store, "put", side_effect=RuntimeError("GCS down")):
        with pytest.raises(RuntimeError, match="GCS down"):
            get_or_create(dsm)
    assert fake_cluster.started == []

    get_or_create(dsm)

    assert len(fake_cluster.started) == 1
    assert "tree" in (checkpointed(kv_store) or {}).get(TEST_DEPLOYMENT_ID, {})


def test_delete_checkpoint_removes_the_key(mock_scoped_actors_dsm):
    """``DeploymentStateManager.delete_checkpoint`` also drops the actor key."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    get_or_create(dsm)
    dsm.save_checkpoint()
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is not None
    assert kv_store.get(CHECKPOINT_KEY) is not None

    dsm.delete_checkpoint()

    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None
    assert kv_store.get(CHECKPOINT_KEY) is None


# --------------------------------------------------------------------------- #
# Readiness, health checks, restarts
# --------------------------------------------------------------------------- #


def test_readiness_starting_to_running(mock_scoped_actors_dsm):
    """The actor is STARTING until it is ready, then RUNNING."""
    create_dsm, timer, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    handle = get_or_create(dsm)
    assert details(dsm)["tree"].state == "STARTING"
    for _ in range(3):
        timer.advance(1)
        dsm.update()
        assert details(dsm)["tree"].state == "STARTING"

    wrapper = make_running(dsm)

    assert details(dsm)["tree"].state == "RUNNING"
    assert details(dsm)["tree"].actor_id == handle._actor_id.hex()
    assert wrapper.reset_health_state_after_running_count == 1
    assert status(dsm, TEST_DEPLOYMENT_ID) == DeploymentStatus.HEALTHY


def test_failed_health_check_recreates_actor(mock_scoped_actors_dsm):
    """An unhealthy actor is killed and recreated with the same arguments."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    first_handle = get_or_create(dsm, args=(1, 2), kwargs={"k": "v"})
    first = make_running(dsm)

    first.set_health_ok(False)
    dsm.update()

    assert first.killed
    second = wrapper_of(dsm)
    assert second is not first
    assert second.handle is not first_handle
    assert second.actor_id != first.actor_id
    assert second._actor_name == first._actor_name
    assert second._config.init_args == (1, 2)
    assert second._config.init_kwargs == {"k": "v"}
    assert len(fake_cluster.starts_of(ray_name())) == 2
    assert details(dsm)["tree"].state == "STARTING"
    assert details(dsm)["tree"].restarts == 1

    make_running(dsm)
    assert details(dsm)["tree"].state == "RUNNING"
    assert details(dsm)["tree"].restarts == 1
    assert get_or_create(dsm) is second.handle

    # Replicas are not touched and nothing is re-checkpointed.
    assert len(replicas(dsm, TEST_DEPLOYMENT_ID, [ReplicaState.RUNNING])) == 2
    assert status(dsm, TEST_DEPLOYMENT_ID) == DeploymentStatus.HEALTHY
    assert kv_store.num_puts() == 1

    second.set_health_ok(False)
    dsm.update()
    assert details(dsm)["tree"].restarts == 2


@patch(f"{SCOPED_ACTORS_MODULE}.DEPLOYMENT_SCOPED_ACTOR_RESTART_BACKOFF_S", 1.0)
@patch(f"{SCOPED_ACTORS_MODULE}.DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S", 4.0)
def test_crash_loop_after_running_is_recreated_with_backoff(mock_scoped_actors_dsm):
    """An actor that keeps dying right after it runs is recreated with backoff.

    A death after a long healthy run and the first death soon after becoming
    RUNNING are recreated at once; further quick deaths wait 1, 2, 4, 4 s.
    """
    create_dsm, timer, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    get_or_create(dsm)
    wrapper = make_running(dsm)
    timer.advance(100)  # a long healthy run

    for expected_delay in [0.0, 0.0, 1.0, 2.0, 4.0, 4.0]:
        starts = len(fake_cluster.started)
        wrapper.set_health_ok(False)
        dsm.update()
        assert wrapper.killed
        if expected_delay:
            assert details(dsm)["tree"].state == "RESTARTING"
            assert len(fake_cluster.started) == starts
            timer.advance(expected_delay - 0.01)
            dsm.update()
            assert len(fake_cluster.started) == starts
            timer.advance(0.02)
            dsm.update()
        assert len(fake_cluster.started) == starts + 1
        wrapper = make_running(dsm)

    # After a long healthy run the next death is recreated at once again.
    timer.advance(100)
    starts = len(fake_cluster.started)
    wrapper.set_health_ok(False)
    dsm.update()
    assert len(fake_cluster.started) == starts + 1
    assert details(dsm)["tree"].restarts == 7


@patch(f"{SCOPED_ACTORS_MODULE}.DEPLOYMENT_SCOPED_ACTOR_MAX_START_ATTEMPTS", 4)
@patch(f"{SCOPED_ACTORS_MODULE}.DEPLOYMENT_SCOPED_ACTOR_RESTART_BACKOFF_S", 1.0)
@patch(f"{SCOPED_ACTORS_MODULE}.DEPLOYMENT_SCOPED_ACTOR_MAX_RESTART_BACKOFF_S", 3.0)
def test_constructor_failures_are_bounded_with_backoff(
    mock_scoped_actors_dsm,
):
    """A failing constructor is retried with backoff, then reported FAILED."""
    create_dsm, timer, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    fake_cluster.failing_constructors.add(ray_name())

    get_or_create(dsm, args=(7,))
    assert len(fake_cluster.started) == 1

    # Attempts 1-3 fail; the delay before attempts 2-4 doubles up to the cap.
    for attempt, backoff in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        dsm.update()
        assert fake_cluster.started[-1].killed
        assert details(dsm)["tree"].state == "RESTARTING"
        assert f"Start attempt {attempt}/4 failed" in details(dsm)["tree"].message
        timer.advance(backoff - 0.01)
        dsm.update()
        assert len(fake_cluster.started) == attempt
        timer.advance(0.01)
        dsm.update()
        assert len(fake_cluster.started) == attempt + 1
        assert details(dsm)["tree"].state == "STARTING"

    # The fourth failure is the last one.
    dsm.update()
    for _ in range(10):
        timer.advance(60)
        dsm.update()
    assert len(fake_cluster.started) == 4
    assert all(w._config.init_args == (7,) for w in fake_cluster.started)
    failed = details(dsm)["tree"]
    assert failed.state == "FAILED"
    assert failed.created_by == "api"
    assert "Failed to start 4 times" in failed.message
    assert "constructor raised" in failed.message

    # The deployment and its replicas are unaffected.
    running = replicas(dsm, TEST_DEPLOYMENT_ID, [ReplicaState.RUNNING])
    assert len(running) == 2
    assert not any(r._actor.stopped for r in running)
    assert status(dsm, TEST_DEPLOYMENT_ID) == DeploymentStatus.HEALTHY
    assert kv_store.num_puts() == 1

    # Asking again starts a new round of attempts at once.
    handle = get_or_create(dsm)
    assert len(fake_cluster.started) == 5
    assert handle is fake_cluster.started[-1].handle
    assert details(dsm)["tree"].state == "STARTING"
    dsm.update()
    assert "Start attempt 1/4 failed" in details(dsm)["tree"].message
    fake_cluster.failing_constructors.clear()
    timer.advance(1.0)
    dsm.update()
    assert len(fake_cluster.started) == 6
    make_running(dsm)
    recovered = details(dsm)["tree"]
    assert recovered.state == "RUNNING"
    assert recovered.message == ""
    assert fake_cluster.started[-1]._config.init_args == (7,)


# --------------------------------------------------------------------------- #
# Deletion, kill_all
# --------------------------------------------------------------------------- #


def test_deleting_deployment_kills_actors_after_replicas_stopped(
    mock_scoped_actors_dsm,
):
    """Actors outlive the deployment's replicas, then the name is free."""
    create_dsm, timer, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    deploy_running(dsm, TEST_DEPLOYMENT_ID_2)
    first_handle = get_or_create(dsm, args=(1,))
    running = make_running(dsm)
    get_or_create(dsm, name="pending")  # still STARTING
    other = get_or_create(dsm, deployment_id=TEST_DEPLOYMENT_ID_2)

    dsm.delete_deployment(TEST_DEPLOYMENT_ID)
    dsm.update()
    stopping = replicas(dsm, TEST_DEPLOYMENT_ID, [ReplicaState.STOPPING])
    assert len(stopping) == 2

    # Replicas still stopping: the actors stay, even when they look unhealthy.
    running.set_health_ok(False)
    stopping[0]._actor.set_done_stopping()
    for _ in range(3):
        timer.advance(1)
        dsm.update()
    assert len(replicas(dsm, TEST_DEPLOYMENT_ID)) == 1
    assert not running.killed
    assert fake_cluster.killed_by_name == []
    assert ray_name() in fake_cluster.live
    assert set(checkpointed(kv_store)[TEST_DEPLOYMENT_ID]) == {"tree", "pending"}

    stopping[1]._actor.set_done_stopping()
    dsm.update()

    assert TEST_DEPLOYMENT_ID not in dsm._deployment_states
    assert running.killed
    assert wrapper_of(dsm) is None
    assert ray_name() not in fake_cluster.live
    assert ray_name("pending") not in fake_cluster.live
    assert TEST_DEPLOYMENT_ID not in checkpointed(kv_store)
    # The other deployment's actor is untouched.
    assert set(checkpointed(kv_store)[TEST_DEPLOYMENT_ID_2]) == {"tree"}
    assert fake_cluster.live[ray_name(deployment_id=TEST_DEPLOYMENT_ID_2)] is other

    # A new deployment under the same name gets a fresh actor.
    deploy_running(dsm)
    new_handle = get_or_create(dsm, args=(2,))
    assert new_handle is not first_handle
    assert new_handle.ray_name == first_handle.ray_name
    assert len(fake_cluster.starts_of(ray_name())) == 2
    assert wrapper_of(dsm)._config.init_args == (2,)
    assert details(dsm)["tree"].restarts == 0
    assert set(details(dsm)) == {"tree"}


def test_deployment_without_actors_deletes_normally(mock_scoped_actors_dsm):
    """Deleting a deployment that never asked for an actor writes nothing."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)

    dsm.delete_deployment(TEST_DEPLOYMENT_ID)
    dsm.update()
    for replica in replicas(dsm, TEST_DEPLOYMENT_ID):
        replica._actor.set_done_stopping()
    dsm.update()

    assert TEST_DEPLOYMENT_ID not in dsm._deployment_states
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None
    assert fake_cluster.scoped_events() == []
    assert dsm._scoped_actors.num_cleaned_up == 0


def test_kill_all_kills_everything(mock_scoped_actors_dsm):
    """``kill_all`` kills running, starting and waiting actors of every deployment."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    deploy_running(dsm, TEST_DEPLOYMENT_ID_2)
    get_or_create(dsm, name="running")
    running = make_running(dsm, "running")
    get_or_create(dsm, name="starting")
    starting = wrapper_of(dsm, "starting")
    fake_cluster.failing_constructors.add(ray_name("waiting"))
    get_or_create(dsm, name="waiting")
    dsm.update()  # Its constructor fails: waiting for the backoff.
    assert details(dsm)["waiting"].state == "RESTARTING"
    get_or_create(dsm, deployment_id=TEST_DEPLOYMENT_ID_2)
    other = wrapper_of(dsm, deployment_id=TEST_DEPLOYMENT_ID_2)

    dsm.kill_all_deployment_scoped_actors()

    assert running.killed and starting.killed and other.killed
    assert ray_name("waiting") in fake_cluster.killed_by_name
    assert fake_cluster.live == {}
    assert checkpointed(kv_store) == {}
    for deployment_id in (TEST_DEPLOYMENT_ID, TEST_DEPLOYMENT_ID_2):
        assert not dsm._scoped_actors.has_actors(deployment_id)
        assert details(dsm, deployment_id) == {}

    dsm.delete_checkpoint()
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None


def test_shutdown_kills_actors_once_deployments_are_gone(
    mock_scoped_actors_dsm,
):
    """``serve.shutdown()``: actors die with their deployments, none is left."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    get_or_create(dsm)
    wrapper = make_running(dsm)

    dsm.shutdown()
    dsm.update()
    assert not wrapper.killed
    for replica in replicas(dsm, TEST_DEPLOYMENT_ID):
        replica._actor.set_done_stopping()
    dsm.update()

    assert dsm.is_ready_for_shutdown()
    assert wrapper.killed
    assert fake_cluster.live == {}
    assert checkpointed(kv_store) == {}
    dsm.kill_all_deployment_scoped_actors()
    dsm.delete_checkpoint()
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None


# --------------------------------------------------------------------------- #
# Recovery after a controller restart
# --------------------------------------------------------------------------- #


def test_recovery_readopts_live_actor(mock_scoped_actors_dsm):
    """A live actor is re-adopted (RECOVERING, then RUNNING), not restarted."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    handle = get_or_create(dsm, args=(1,))
    make_running(dsm)
    dsm.save_checkpoint()
    puts_before = kv_store.num_puts()

    new_dsm = create_dsm(
        actor_names=replica_names(dsm, TEST_DEPLOYMENT_ID) + [ray_name()]
    )

    assert fake_cluster.looked_up == [ray_name()]
    assert len(fake_cluster.started) == 1
    assert fake_cluster.killed_by_name == []
    recovered = wrapper_of(new_dsm)
    assert recovered.handle is handle
    assert details(new_dsm)["tree"].state == "RECOVERING"
    assert details(new_dsm)["tree"].actor_id == handle._actor_id.hex()
    assert kv_store.num_puts() == puts_before

    make_running(new_dsm)

    assert details(new_dsm)["tree"].state == "RUNNING"
    assert get_or_create(new_dsm) is handle
    assert len(fake_cluster.started) == 1
    assert kv_store.num_puts() == puts_before


def test_recovery_recreates_dead_actor(mock_scoped_actors_dsm):
    """An actor that died while the controller was down is recreated."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    old_handle = get_or_create(dsm, args=(1,), kwargs={"k": "v"})
    make_running(dsm)
    dsm.save_checkpoint()
    del fake_cluster.live[ray_name()]  # It dies with the controller.
    puts_before = kv_store.num_puts()

    new_dsm = create_dsm(actor_names=replica_names(dsm, TEST_DEPLOYMENT_ID))

    assert len(fake_cluster.started) == 1
    assert details(new_dsm)["tree"].state == "RESTARTING"
    new_dsm.update()

    assert len(fake_cluster.started) == 2
    recreated = wrapper_of(new_dsm)
    assert recreated.handle is not old_handle
    assert recreated._config.init_args == (1,)
    assert recreated._config.init_kwargs == {"k": "v"}
    # The class is rebuilt from the checkpoint alone.
    assert recreated._config.get_actor_class().__ray_actor_class__.__name__ == (
        "PrefixTree"
    )
    assert details(new_dsm)["tree"].state == "STARTING"
    make_running(new_dsm)
    assert details(new_dsm)["tree"].state == "RUNNING"
    assert fake_cluster.killed_by_name == []
    assert kv_store.num_puts() == puts_before


def _restart_without_deployment_2(create_dsm, kv_store):
    """Two deployments with actors; restart as if deployment 2 had been deleted.

    The deployment checkpoint no longer has deployment 2 but the actor
    checkpoint still does: the controller died between the two writes.
    """
    dsm = create_dsm()
    deploy_running(dsm)
    deploy_running(dsm, TEST_DEPLOYMENT_ID_2)
    get_or_create(dsm)
    get_or_create(dsm, name="gone", deployment_id=TEST_DEPLOYMENT_ID_2)
    dsm.save_checkpoint()
    states = cloudpickle.loads(kv_store.get(CHECKPOINT_KEY))
    del states[TEST_DEPLOYMENT_ID_2]
    kv_store.put(CHECKPOINT_KEY, cloudpickle.dumps(states))

    gone = ray_name("gone", TEST_DEPLOYMENT_ID_2)
    new_dsm = create_dsm(
        actor_names=replica_names(dsm, TEST_DEPLOYMENT_ID) + [ray_name(), gone]
    )
    return new_dsm, gone


def test_recovery_cleans_up_actors_of_missing_deployments(
    mock_scoped_actors_dsm,
):
    """Checkpointed actors whose deployment is gone are killed and forgotten."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm

    new_dsm, gone = _restart_without_deployment_2(create_dsm, kv_store)

    assert gone in fake_cluster.killed_by_name
    assert gone not in fake_cluster.live
    assert ray_name() not in fake_cluster.killed_by_name
    assert ray_name() in fake_cluster.live
    assert set(checkpointed(kv_store)) == {TEST_DEPLOYMENT_ID}
    assert set(checkpointed(kv_store)[TEST_DEPLOYMENT_ID]) == {"tree"}
    assert not new_dsm._scoped_actors.has_actors(TEST_DEPLOYMENT_ID_2)
    assert details(new_dsm)["tree"].state == "RECOVERING"


def test_recovery_kills_actor_of_missing_deployment_once(
    mock_scoped_actors_dsm,
):
    """Each leftover actor is killed (and counted) exactly once."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm

    new_dsm, gone = _restart_without_deployment_2(create_dsm, kv_store)

    assert fake_cluster.killed_by_name == [gone]
    assert new_dsm._scoped_actors.num_cleaned_up == 1


def test_recovery_kills_only_unaccounted_runtime_actors(
    mock_scoped_actors_dsm,
):
    """Unaccounted runtime-shaped actors die; declarative and others never do."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    handle = get_or_create(dsm)
    dsm.save_checkpoint()

    strays = [
        ray_name("stray"),
        ray_name("x", DeploymentID(name="unknown", app_name="test_app")),
        ray_name("y", DeploymentID(name="d", app_name="a::b")),
    ]
    declarative = [
        get_deployment_actor_name(TEST_DEPLOYMENT_ID, "tree", code_version="1"),
        get_deployment_actor_name(TEST_DEPLOYMENT_ID, "stray", code_version="2"),
        get_deployment_actor_name(TEST_DEPLOYMENT_ID, "cq", code_version=""),
        get_deployment_actor_name(
            DeploymentID(name="unknown", app_name="test_app"), "x", code_version="v"
        ),
    ]
    others = replica_names(dsm, TEST_DEPLOYMENT_ID) + [
        ReplicaID("abcd", TEST_DEPLOYMENT_ID_2).to_full_id_str(),
        SERVE_CONTROLLER_NAME,
        "SERVE_PROXY_ACTOR-node-id",
        f"{SERVE_DEPLOYMENT_ACTOR_PREFIX}test_app::test_deployment",
        f"{SERVE_DEPLOYMENT_ACTOR_PREFIX}test_app::test_deployment::a b",
        "some_user_actor",
    ]
    for name in strays + declarative + others:
        fake_cluster.live.setdefault(name, fake_cluster.spawn(name))

    new_dsm = create_dsm(actor_names=[ray_name()] + strays + declarative + others)

    assert sorted(fake_cluster.killed_by_name) == sorted(strays)
    for name in declarative + others + [ray_name()]:
        assert name in fake_cluster.live
    assert fake_cluster.looked_up == [ray_name()]
    assert wrapper_of(new_dsm).handle is handle
    assert set(details(new_dsm)) == {"tree"}
    assert set(checkpointed(kv_store)[TEST_DEPLOYMENT_ID]) == {"tree"}


def test_recovery_without_checkpoint_does_nothing(mock_scoped_actors_dsm):
    """A first controller start with no actors neither looks up nor writes."""
    create_dsm, _, kv_store = mock_scoped_actors_dsm

    dsm = create_dsm(
        actor_names=[
            get_deployment_actor_name(TEST_DEPLOYMENT_ID, "tree", code_version="1")
        ]
    )

    assert fake_cluster.scoped_events() == []
    assert fake_cluster.looked_up == []
    assert fake_cluster.killed_by_name == []
    assert kv_store.get(DEPLOYMENT_SCOPED_ACTORS_CHECKPOINT_KEY) is None
    assert dsm._scoped_actors._records == {}


# --------------------------------------------------------------------------- #
# Visibility
# --------------------------------------------------------------------------- #


def test_list_details(mock_scoped_actors_dsm):
    """Deployment details list each actor with its state, origin and restarts."""
    create_dsm, _, _ = mock_scoped_actors_dsm
    dsm = create_dsm()
    deploy_running(dsm)
    assert details(dsm) == {}

    get_or_create(dsm, name="running")
    make_running(dsm, "running").set_health_ok(False)
    dsm.update()
    make_running(dsm, "running")
    running_handle = wrapper_of(dsm, "running").handle
    starting_handle = get_or_create(dsm, name="starting", actor_class=OtherActor)

    by_name = details(dsm)
    assert list(by_name) == ["running", "starting"]
    running, starting = by_name["running"], by_name["starting"]
    assert running.state == "RUNNING"
    assert running.created_by == "api"
    assert running.restarts == 1
    assert running.actor_name == ray_name("running")
    assert running.actor_class == _class_path(PrefixTree)
    assert running.actor_id == running_handle._actor_id.hex()
    assert starting.state == "STARTING"
    assert starting.created_by == "api"
    assert starting.restarts == 0
    assert starting.actor_class == _class_path(OtherActor)
    assert starting.actor_id == starting_handle._actor_id.hex()
    assert running.actor_id != starting.actor_id
    assert dsm.get_deployment_details(TEST_DEPLOYMENT_ID_2) is None


def test_wrapper_uses_runtime_name_and_serve_namespace():
    """The real wrapper: runtime name, handle accessors and by-name Ray calls."""
    config = DeploymentActorConfig(name="tree", actor_class=PrefixTree)
    wrapper = DeploymentScopedActorWrapper(TEST_DEPLOYMENT_ID, config)
    assert wrapper._actor_name == ray_name()
    assert wrapper.actor_logical_name == "tree"
    assert wrapper.handle is None and wrapper.actor_id is None

    handle = fake_cluster.spawn(ray_name())
    recovered = DeploymentScopedActorWrapper(
        TEST_DEPLOYMENT_ID, config, recovered_handle=handle
    )
    assert recovered.handle is handle
    assert recovered.actor_id == handle._actor_id.hex()

    # An asked-for health check is due at once, unless one is in flight.
    recovered._last_health_check_time = 100.0
    recovered.request_health_check()
    assert recovered._last_health_check_time == 0.0
    recovered._health_check_ref = object()
    recovered._last_health_check_time = 100.0
    recovered.request_health_check()
    assert recovered._last_health_check_time == 100.0

    with (
        patch("ray.get_actor", return_value=handle) as get_actor,
        patch("ray.kill") as kill,
    ):
        assert DeploymentScopedActorWrapper.lookup(ray_name()) is handle
        DeploymentScopedActorWrapper.kill_by_name(ray_name())
    get_actor.assert_called_with(ray_name(), namespace=SERVE_NAMESPACE)
    kill.assert_called_once_with(handle, no_restart=True)

    with (
        patch("ray.get_actor", side_effect=ValueError("no such actor")),
        patch("ray.kill") as kill,
    ):
        assert DeploymentScopedActorWrapper.lookup(ray_name()) is None
        DeploymentScopedActorWrapper.kill_by_name(ray_name())
    kill.assert_not_called()


# --------------------------------------------------------------------------- #
# Naming
# --------------------------------------------------------------------------- #

TRICKY_COMPONENTS = [
    "",
    "a",
    "b",
    "c",
    ":",
    "::",
    ":::",
    "a:",
    ":a",
    "a::b",
    "b::c",
    "a:b",
    "%",
    "%%",
    "%3A",
    "%253A",
    "%25",
    "%:",
    ":%",
    "a%3A%3Ab",
    "a%3A:b",
    "%3A%3A",
    "default",
    "app 1",
    "ü-é",
    "SERVE_DEPLOYMENT_ACTOR",
    "SERVE_DEPLOYMENT_ACTOR::a",
]
TRICKY_ACTOR_NAMES = ["a", "c", "b.c", "tree", "3A", "25", "a" * 128]


def _all_deployment_ids() -> List[DeploymentID]:
    """Every (app, deployment) pair of TRICKY_COMPONENTS."""
    return [
        DeploymentID(name=name, app_name=app)
        for app, name in itertools.product(TRICKY_COMPONENTS, repeat=2)
    ]


def test_name_escaping_keeps_app_and_deployment_apart():
    """'a::b' + 'c' and 'a' + 'b::c' do not share a Ray actor name."""
    first = DeploymentID(name="c", app_name="a::b")
    second = DeploymentID(name="b::c", app_name="a")

    first_name = get_deployment_scoped_actor_name(first, "tree")
    second_name = get_deployment_scoped_actor_name(second, "tree")

    assert first_name != second_name
    assert parse_deployment_scoped_actor_name(first_name) == (first, "tree")
    assert parse_deployment_scoped_actor_name(second_name) == (second, "tree")
    assert first_name == "SERVE_DEPLOYMENT_ACTOR::a%3A%3Ab::c::tree"


def test_names_are_injective_and_parse_back():
    """Every (deployment, name) maps to a distinct Ray name that parses back."""
    seen = {}
    for deployment_id in _all_deployment_ids():
        for actor_name in TRICKY_ACTOR_NAMES:
            full = get_deployment_scoped_actor_name(deployment_id, actor_name)
            assert full.startswith(SERVE_DEPLOYMENT_ACTOR_PREFIX)
            assert full not in seen, (full, seen.get(full), deployment_id)
            seen[full] = (deployment_id, actor_name)
            assert parse_deployment_scoped_actor_name(full) == (
                deployment_id,
                actor_name,
            )


def test_names_are_injective_on_random_strings():
    """Property check over random strings built from '%', ':', '3', 'A', '2', '5'."""
    rng = random.Random(0)
    alphabet = "%:3A25a"
    seen = {}
    for _ in range(5000):
        app = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        deployment_id = DeploymentID(name=name, app_name=app)
        full = get_deployment_scoped_actor_name(deployment_id, "tree")
        assert seen.setdefault(full, deployment_id) == deployment_id
        assert parse_deployment_scoped_actor_name(full) == (deployment_id, "tree")


def test_names_never_equal_declarative_names():
    """Runtime names never collide with code-versioned declarative names."""
    runtime = {
        get_deployment_scoped_actor_name(deployment_id, actor_name)
        for deployment_id in _all_deployment_ids()
        for actor_name in TRICKY_ACTOR_NAMES
    }
    code_versions = ["", "1", "a", "c", "tree", "%3A", ":", "b::c"]
    declarative_names = TRICKY_ACTOR_NAMES + ["", "x:y", "a::b"]
    for deployment_id in _all_deployment_ids():
        for code_version in code_versions:
            for actor_name in declarative_names:
                declarative = get_deployment_actor_name(
                    deployment_id, actor_name, code_version=code_version
                )
                assert declarative not in runtime
                assert parse_deployment_scoped_actor_name(declarative) is None


@pytest.mark.parametrize(
    "name",
    [
        "SERVE_REPLICA::test_app#test_deployment#abcd",
        SERVE_CONTROLLER_NAME,
        "SERVE_DEPLOYMENT_ACTOR::a::b",
        "SERVE_DEPLOYMENT_ACTOR::a::b::c::d",
        "SERVE_DEPLOYMENT_ACTOR::a::b::c d",
        "SERVE_DEPLOYMENT_ACTOR::a::b::",
        "SERVE_DEPLOYMENT_ACTOR::a:b::c::d",
        "OTHER::a::b::c",
        "",
    ],
)
def test_parse_rejects_other_names(name):
    """Names that are not runtime deployment actor names parse to None."""
    assert parse_deployment_scoped_actor_name(name) is None


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
