"""Jobs and the states of their tasks, as the coordinator holds them in memory.

A job keeps one byte of state and one byte of attempt count per task instead
of an object per task, so a million queued tasks cost a few megabytes. Its
ready tasks are the indices from ``next_fresh`` onwards (never leased yet)
plus a small heap of indices that came back (lease lost, released, retry due);
both are read in index order, so a job's tasks run in submission order.

Stages: a job may have a *first* task, run before its parallel tasks, and a
*final* task, run once they all succeeded (:class:`StageTask`, each of its own
task type). They are addressed by the indices just past the parallel ones
(``total`` for the first, then the final), so leases, reports, retries and the
journal treat every task alike through :meth:`Job.state_of`,
:meth:`Job.set_state` and :meth:`Job.attempts_of`. Only the tasks of the
current stage are ever ready, so a job's ready tasks are always of one type
(:attr:`Job.ready_type`); ``counts`` and ``total`` are the parallel tasks'.

Dead letters: a job whose task was dead-lettered is FAILED but *holds* its
dead letters (:attr:`Job.dead_letters_held`): it keeps its payloads, its task
states and its dead tasks' errors, so that :meth:`Job.reopen` can put it back
on the queue as it was, or until a purge lets it go like any finished job.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq

from fractalq.states import FINISHED


class TaskState(enum.IntEnum):
    QUEUED = 0
    LEASED = 1
    DELAYED = 2  # failed, waiting out its retry backoff
    SUCCEEDED = 3
    DEAD = 4  # dead-lettered: failed max_attempts times
    CANCELLED = 5
    WAITING = 6  # a stage task whose stage has not come yet


class JobState(enum.IntEnum):
    # Same numbers as the proto's JobState.
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5
    PREPARING = 6  # the first task runs
    FINISHING = 7  # the final task runs

    @property
    def finished(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(JobState(state) for state in FINISHED)
TERMINAL_TASK_STATES = frozenset({TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED})


class Stage(enum.Enum):
    FIRST = "first"
    PARALLEL = "parallel"
    FINAL = "final"


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A task as submitted for a stage (first, final) or for the cleanup: type and payload."""

    task_type: str
    payload: bytes


@dataclasses.dataclass(frozen=True)
class AttemptError:
    """Why one attempt of a task failed."""

    attempt: int
    at: float  # Unix seconds
    worker: str  # the worker that ran it
    message: str


@dataclasses.dataclass(eq=False)
class StageTask:
    """A job's first or final task: one task of its own type and payload."""

    task_type: str
    payload: bytes
    state: TaskState = TaskState.WAITING
    attempts: int = 0
    result: bytes = b""  # the final task's, once it succeeded


@dataclasses.dataclass(eq=False)
class Job:
    job_id: str
    seq: int  # global submission order, the tie-breaker between equal priorities
    task_type: str
    priority: int
    max_attempts: int
    total: int
    fingerprint: str
    created_at: float
    # One payload per task, or one shared by every task.
    payloads: list[bytes] | None = None
    shared_payload: bytes = b""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    state: JobState = JobState.QUEUED
    reason: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    states: bytearray = dataclasses.field(default_factory=bytearray)
    attempts: bytearray = dataclasses.field(default_factory=bytearray)
    next_fresh: int = 0
    returned: list[int] = dataclasses.field(default_factory=list)
    counts: dict[TaskState, int] = dataclasses.field(default_factory=dict)
    first: StageTask | None = None
    final: StageTask | None = None
    time_limit: float = 0.0  # seconds per attempt; 0: each task type's default
    stage: Stage = Stage.PARALLEL
    # Submitted as a job of its own (cleanup_job) if this one fails or is cancelled.
    cleanup: StageSpec | None = None
    cleanup_job: str = ""
    transient: bool = False  # never journaled (see Broker): the explorer's tiles
    # The holder of the token that submitted it ("": tokens are off, or the
    # coordinator's own job); a cleanup job has its job's.
    owner: str = ""
    # Failed attempts by task index, oldest first (bounded, see Broker); kept
    # while the task may still run or is dead-lettered and held.
    errors: dict[int, list[AttemptError]] = dataclasses.field(default_factory=dict)
    dead_letters_held: bool = False  # FAILED, held for a requeue or a purge
    # Since when the current stage's tasks are ready (its release, or the
    # coordinator's start), and since when each task that came back is (a retry
    # due, a lease lost or handed back): a lease's queue wait, for /metrics.
    ready_at: float = 0.0
    returned_at: dict[int, float] = dataclasses.field(default_factory=dict)
    # A job of one task and no final task: that task's result, once it succeeded.
    lone_result: bytes = b""

    def __post_init__(self) -> None:
        self.ready_at = self.ready_at or self.created_at
        if not self.states:
            self.states = bytearray(self.total)  # all QUEUED
            self.attempts = bytearray(self.total)
        self.counts = {state: 0 for state in TaskState}
        for value in self.states:
            self.counts[TaskState(value)] += 1

    @property
    def result(self) -> bytes:
        """The job's result: its final task's, or, in a job of one task and no final
        task, that task's (a small render makes its image in its one task)."""
        return self.final.result if self.final is not None else self.lone_result

    @property
    def lone(self) -> bool:
        """Whether the job's one task gives the job its result."""
        return self.final is None and self.total == 1

    # ---- stages ----------------------------------------------------------

    def stage_task(self, index: int) -> StageTask | None:
        """The first or final task if ``index`` is one's (past the parallel tasks)."""
        if index < self.total:
            return None
        if index == self.total and self.first is not None:
            return self.first
        return self.final if index == self.final_index else None

    @property
    def final_index(self) -> int:
        return self.total + (1 if self.first is not None else 0)

    @property
    def size(self) -> int:
        """How many indices a job's tasks take: the parallel ones and its stage tasks."""
        return self.final_index + (1 if self.final is not None else 0)

    def stage_tasks(self) -> list[tuple[int, StageTask]]:
        found = []
        if self.first is not None:
            found.append((self.total, self.first))
        if self.final is not None:
            found.append((self.final_index, self.final))
        return found

    def _running_stage_task(self) -> tuple[int, StageTask] | None:
        """The first or final task while its stage runs, with its index; None while
        the parallel tasks run."""
        if self.stage is Stage.FIRST and self.first is not None:
            return self.total, self.first
        if self.stage is Stage.FINAL and self.final is not None:
            return self.final_index, self.final
        return None

    @property
    def ready_type(self) -> str:
        """The task type of the stage that runs now (only its tasks are ever ready)."""
        running = self._running_stage_task()
        return running[1].task_type if running is not None else self.task_type

    def start(self) -> None:
        """At submission: the first stage there is."""
        if self.first is not None:
            self.stage = Stage.FIRST
            self.first.state = TaskState.QUEUED

    def resume(self) -> None:
        """After loading an unfinished job: the stage to run, from what has succeeded.

        A stage task that was leased or waiting out a backoff is ready again.
        """
        if self.first is not None and self.first.state is not TaskState.SUCCEEDED:
            self.stage, task = Stage.FIRST, self.first
        elif self.final is not None and self.counts[TaskState.SUCCEEDED] == self.total:
            self.stage, task = Stage.FINAL, self.final
        else:
            self.stage = Stage.PARALLEL
            return
        if task.state not in TERMINAL_TASK_STATES:
            task.state = TaskState.QUEUED

    def advance(self) -> bool:
        """After a stage's last success: release the next; False when none is left."""
        if self.stage is Stage.FIRST:
            self.stage = Stage.PARALLEL
            return True
        if self.stage is Stage.PARALLEL and self.final is not None:
            self.stage = Stage.FINAL
            self.final.state = TaskState.QUEUED
            return True
        return False

    def stage_done(self) -> bool:
        """Has every task of the current stage succeeded?"""
        running = self._running_stage_task()
        if running is None:
            return self.counts[TaskState.SUCCEEDED] == self.total
        return running[1].state is TaskState.SUCCEEDED

    def leased_out(self) -> int:
        """Tasks some worker holds, stage tasks included."""
        stage = sum(1 for _, task in self.stage_tasks() if task.state is TaskState.LEASED)
        return self.counts[TaskState.LEASED] + stage

    # ---- any task, by index ----------------------------------------------

    def state_of(self, index: int) -> TaskState:
        task = self.stage_task(index)
        return task.state if task is not None else TaskState(self.states[index])

    def attempts_of(self, index: int) -> int:
        task = self.stage_task(index)
        return task.attempts if task is not None else self.attempts[index]

    def uncount_attempt(self, index: int) -> None:
        """A lease handed back unrun does not count as an attempt."""
        task = self.stage_task(index)
        if task is not None:
            task.attempts -= 1
        else:
            self.attempts[index] -= 1

    def task_type_of(self, index: int) -> str:
        task = self.stage_task(index)
        return task.task_type if task is not None else self.task_type

    def payload_bytes(self) -> int:
        """What its payloads hold (a shared payload counts once); 0 once dropped."""
        stages = sum(len(task.payload) for _, task in self.stage_tasks())
        if self.payloads is not None:
            return stages + sum(map(len, self.payloads))
        return stages + len(self.shared_payload)

    def payload(self, index: int) -> bytes:
        task = self.stage_task(index)
        if task is not None:
            return task.payload
        return self.payloads[index] if self.payloads is not None else self.shared_payload

    def set_state(self, index: int, state: TaskState) -> None:
        task = self.stage_task(index)
        if task is not None:
            task.state = state
            return
        old = TaskState(self.states[index])
        self.counts[old] -= 1
        self.counts[state] += 1
        self.states[index] = state

    def task_state(self, index: int) -> TaskState:
        return self.state_of(index)

    # ---- the ready set ---------------------------------------------------

    def has_ready(self) -> bool:
        running = self._running_stage_task()
        if running is None:
            return self.counts[TaskState.QUEUED] > 0
        return running[1].state is TaskState.QUEUED

    def push_ready(self, index: int, now: float | None = None) -> None:
        """Mark a task ready again (a parallel one must be below next_fresh), since ``now``."""
        if now is not None:
            self.returned_at[index] = now
        self.set_state(index, TaskState.QUEUED)
        if self.stage_task(index) is None:
            heapq.heappush(self.returned, index)

    def waited(self, index: int, now: float) -> float:
        """How long task ``index``, leased ``now``, was ready and waiting."""
        return max(now - self.returned_at.pop(index, self.ready_at), 0.0)

    def lease_next(self) -> int | None:
        """Lease the current stage's lowest ready index (attempts + 1), or None."""
        running = self._running_stage_task()
        if running is not None:
            at, task = running
            if task.state is not TaskState.QUEUED:
                return None
            task.state = TaskState.LEASED
            task.attempts += 1
            return at
        index = self._pop_ready()
        if index is not None:
            self.set_state(index, TaskState.LEASED)
            self.attempts[index] += 1
        return index

    def _pop_ready(self) -> int | None:
        while self.returned:
            index = heapq.heappop(self.returned)
            if self.states[index] == TaskState.QUEUED:
                return index
        while self.next_fresh < self.total:
            index = self.next_fresh
            self.next_fresh += 1
            if self.states[index] == TaskState.QUEUED:
                return index
        return None

    def rebuild_ready(self) -> None:
        """After loading from disk: queued tasks below the fresh tail go in the heap."""
        last = self.total
        while last > 0 and self.states[last - 1] == TaskState.QUEUED:
            last -= 1
        self.next_fresh = last
        self.returned = [i for i in range(last) if self.states[i] == TaskState.QUEUED]
        heapq.heapify(self.returned)

    def drop_payloads(self) -> None:
        """A finished job keeps no payloads; its task states go once no lease is out."""
        self.payloads = None
        self.shared_payload = b""
        self.returned = []
        for _, task in self.stage_tasks():
            task.payload = b""
        if not self.counts[TaskState.LEASED]:
            self.states = bytearray()
            self.attempts = bytearray()

    def dead_tasks(self) -> list[int]:
        """The indices of its dead-lettered tasks, stage tasks included."""
        if not self.states:  # a finished job whose task states are gone
            return []
        found = [i for i, value in enumerate(self.states) if value == TaskState.DEAD]
        return found + [i for i, task in self.stage_tasks() if task.state is TaskState.DEAD]

    def unfinished_tasks(self) -> int:
        """Tasks not done yet, stage tasks included (what a holder's quota counts)."""
        stages = sum(1 for _, task in self.stage_tasks() if task.state is not TaskState.SUCCEEDED)
        return self.total - self.counts[TaskState.SUCCEEDED] + stages

    def reopen(self, requeued: set[int]) -> None:
        """A FAILED job runs again: its dead tasks in ``requeued`` go back to the
        queue with their attempts reset, and so does every task its failure dropped
        (cancelled); those still leased stay leased. The stage is the first one
        not done, as after a restart (:meth:`resume`)."""
        for index in range(self.size):
            value = self.state_of(index)
            if value is TaskState.DEAD and index in requeued:
                task = self.stage_task(index)
                if task is not None:
                    task.attempts = 0
                else:
                    self.attempts[index] = 0
            elif value is not TaskState.CANCELLED:
                continue
            self.set_state(index, TaskState.QUEUED)
        self.stage = Stage.PARALLEL
        if self.first is not None and self.first.state is not TaskState.SUCCEEDED:
            self.stage = Stage.FIRST
        elif self.final is not None and self.counts[TaskState.SUCCEEDED] == self.total:
            self.stage = Stage.FINAL
        # A stage task waits for its stage; the current stage's is ready (or still out).
        for index, task in self.stage_tasks():
            if task.state is TaskState.QUEUED and self._running_stage_task() != (index, task):
                task.state = TaskState.WAITING
            elif task.state is TaskState.WAITING and self._running_stage_task() == (index, task):
                task.state = TaskState.QUEUED
        self.rebuild_ready()
        self.state = {
            Stage.FIRST: JobState.PREPARING,
            Stage.PARALLEL: JobState.RUNNING,
            Stage.FINAL: JobState.FINISHING,
        }[self.stage]
        self.reason = ""
        self.finished_at = 0.0
        self.dead_letters_held = False

    def settled(self) -> bool:
        """Finished, and no worker still holds one of its tasks."""
        return self.state.finished and not self.leased_out()
