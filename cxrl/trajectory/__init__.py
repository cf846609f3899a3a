"""The trajectory store and advantage tracker.

``TrajectoryStore(...)`` keeps one epoch of rollouts (API in docs/architecture.md) and returns the
backend its choice rule picks (:mod:`cxrl.trajectory.store`), each a ``TrajectoryStore`` subclass:

* :mod:`~cxrl.trajectory.cpp_store` -- ``"cpp"``: CPU stores when ``cxrl._C`` imports; a pinned C++
  arena, zero-copy views, threaded gathers into a staging buffer (:mod:`~cxrl.trajectory.staging`).
* :mod:`~cxrl.trajectory.torch_store` -- ``"torch"``: stores on a GPU; vectorised torch gathers.
* :mod:`~cxrl.trajectory.reference` -- ``"reference"``: the specification, and the store without the
  extension. Plans (:mod:`~cxrl.trajectory.plan`) and files (:mod:`~cxrl.trajectory.format`) are shared.

``AdvantageTracker`` (:mod:`~cxrl.trajectory.advantages`) runs its statistics in C++ when available,
else in Python; results agree.
"""
from cxrl.trajectory.advantages import AdvantageTracker
from cxrl.trajectory.cpp_store import CppTrajectoryStore
from cxrl.trajectory.format import TrajectoryFormatError
from cxrl.trajectory.plan import Minibatch, MinibatchPlan, num_trained_steps, reference_plan
from cxrl.trajectory.reference import ReferenceTrajectoryStore
from cxrl.trajectory.store import TrajectoryStore
from cxrl.trajectory.torch_store import TorchTrajectoryStore

__all__ = ["AdvantageTracker", "CppTrajectoryStore", "Minibatch", "MinibatchPlan", "ReferenceTrajectoryStore",
           "TorchTrajectoryStore", "TrajectoryFormatError", "TrajectoryStore", "num_trained_steps", "reference_plan"]
