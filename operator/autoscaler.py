"""How many workers: queue depth in, replica count out.

``recommend`` is ``clamp(ceil(depth / tasks_per_worker), min, max)``. Scaling
up follows the recommendation at once; scaling down goes only as low as the
highest recommendation seen during the last ``down_window`` seconds (as the
HPA's stabilisation window does), so a dip in the queue between two jobs does
not kill workers that are about to be needed; and so the count reaches
``min`` only after the queue has been empty for the whole window. When the
queue depth cannot be read, the current count is held: never scale down blind.
"""

from __future__ import annotations

import collections
import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ScalePolicy:
    minimum: int
    maximum: int
    tasks_per_worker: int
    down_window: float


def recommend(depth: int, policy: ScalePolicy) -> int:
    wanted = math.ceil(depth / policy.tasks_per_worker)
    return max(policy.minimum, min(policy.maximum, wanted))


class Autoscaler:
    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._seen: collections.deque[tuple[float, int]] = collections.deque()

    def decide(self, depth: int | None, current: int, now: float) -> int:
        """The replica count to set, given queue depth (None: unknown) and the current count."""
        if depth is None:
            return current
        wanted = recommend(depth, self.policy)
        self._seen.append((now, wanted))
        while self._seen and self._seen[0][0] < now - self.policy.down_window:
            self._seen.popleft()
        if wanted >= current:
            return wanted
        stable = max(count for _, count in self._seen)
        return max(self.policy.minimum, min(current, stable))
