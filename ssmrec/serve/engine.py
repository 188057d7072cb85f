"""The serving engine: one inference thread that owns the model and the state cache, fed by a queue.

Requests from any number of connections are queued; the thread takes what is waiting (up to
``max_batch``, waiting at most ``max_wait_ms`` for more once one arrived) and runs consecutive requests
of one kind as one batched call: all queued events in one ``update`` (users stepped together), all
queued ``/score`` requests in one ``score``. Order is kept: a request sees every event queued before
it. One owner thread means no locks around the cache and no oversubscribed torch threads; torch's
intra-op threads (``--threads``) parallelise each batched call.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ssmrec.runtime import flush_denormals
from ssmrec.serve.adapter import ServingAdapter, UserEntry
from ssmrec.serve.cache import Persister, StateCache


class UnknownUser(LookupError):
    pass


@dataclass
class Events:
    user: str
    items: torch.Tensor


@dataclass
class Score:
    user: str | None
    history: torch.Tensor | None
    candidates: torch.Tensor
    features: dict[str, torch.Tensor] | None = None  # named candidate features, validated by the service
    user_row: tuple | None = None  # retrieval: the user's encoded (numeric, categorical) feature row


@dataclass
class Recommend:
    user: str | None
    history: torch.Tensor | None
    k: int
    exclude_seen: bool = False
    candidates: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None
    user_row: tuple | None = None


@dataclass
class Inspect:
    user: str


@dataclass
class _Job:
    op: object
    future: Future = field(default_factory=Future)


class Engine:
    def __init__(self, scorer: ServingAdapter, cache: StateCache, persister: Persister | None = None,
                 max_batch: int = 64, max_wait_ms: float = 0.5, threads: int | None = None,
                 on_batch=None):
        self.scorer, self.cache, self.persister = scorer, cache, persister
        self.max_batch, self.max_wait = max(1, int(max_batch)), max(0.0, max_wait_ms) / 1000.0
        self.threads = threads
        self.on_batch = on_batch  # callback(kind, size, seconds) for metrics
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._until = None
        self.events_applied = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run the inference loop on a new thread (in-process use, tests). ``ssmrec serve`` runs it on
        the main thread instead (:meth:`run`): MKL / OpenMP matmuls issued from another thread ran
        ~40 % slower on this project's 2-core machine."""
        self._thread = threading.Thread(target=self._run, name="ssmrec-inference", daemon=True)
        self._thread.start()

    def run(self, until) -> None:
        """Serve on the calling thread until ``until()`` is true (checked at least every 50 ms), then
        finish what is queued and save the cache."""
        self._until = until
        self._run()
        while True:  # requests that arrived while stopping
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._process([job])
        if self.persister is not None:
            self.persister.flush()

    def stop(self) -> None:
        """Finish what is queued, stop the thread, save the cache one last time."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if self.persister is not None:
            self.persister.flush()

    def submit(self, op) -> Future:
        job = _Job(op)
        self._q.put(job)
        return job.future

    # ------------------------------------------------------------------ the inference thread
    def _run(self) -> None:
        flush_denormals()  # per thread: the pool this thread starts inherits it
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            try:
                first = self._q.get(timeout=0.05)
            except queue.Empty:
                self._maybe_persist()
                if self._until is not None and self._until():
                    return
                continue
            if first is None:
                return
            jobs = [first]
            deadline = time.perf_counter() + self.max_wait
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    job = self._q.get(timeout=max(0.0, deadline - time.perf_counter())) if self.max_wait \
                        else self._q.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            self._process(jobs)
            self._maybe_persist()
            if stop:
                return

    def _maybe_persist(self) -> None:
        if self.persister is not None and self.persister.due():
            self.persister.start_save()

    def _process(self, jobs: list[_Job]) -> None:
        run: list[_Job] = []
        for job in jobs:  # consecutive jobs of one kind form one batched call
            if run and type(run[0].op) is not type(job.op):
                self._process_run(run)
                run = []
            run.append(job)
        if run:
            self._process_run(run)

    def _process_run(self, run: list[_Job]) -> None:
        kind = type(run[0].op).__name__
        t0 = time.perf_counter()
        try:
            handler = {"Events": self._events, "Score": self._score, "Recommend": self._recommend,
                       "Inspect": self._inspect}[kind]
            handler(run)
        except Exception as e:
            # one bad read must not fail its batch neighbours: retry reads one by one. Events are never
            # retried here (that could apply them twice); _events isolates users itself.
            if len(run) > 1 and kind != "Events":
                for job in run:
                    if not job.future.done():
                        self._process_run([job])
            else:
                for job in run:
                    if not job.future.done():
                        job.future.set_exception(e)
        if self.on_batch is not None:
            self.on_batch(kind, len(run), time.perf_counter() - t0)

    def _events(self, run: list[_Job]) -> None:
        """Apply a run of /events: each user's events once and in order. New entries are computed for
        every user before any is stored; if the batched call fails, each user is retried alone from
        the entry it had, so a failing user fails only its own requests and a neighbour's events are
        never applied twice."""
        per_user: dict[str, list[torch.Tensor]] = {}
        for job in run:
            per_user.setdefault(job.op.user, []).append(job.op.items)
        items = {u: torch.cat(xs) for u, xs in per_user.items()}
        try:
            new, errors = self._apply(list(items), items), {}
        except Exception:
            new, errors = {}, {}
            for u in items:
                try:
                    new.update(self._apply([u], items))
                except Exception as e:
                    errors[u] = e
        counts = {}
        for u, entry in new.items():
            try:
                self.cache.put(u, entry)
                counts[u] = self.scorer.events_of(entry)
                self.events_applied += len(items[u])
            except Exception as e:  # e.g. one state over the whole cache budget
                errors[u] = e
        for job in run:  # each request is acknowledged with its user's event count after the whole run
            if job.op.user in errors:
                job.future.set_exception(errors[job.op.user])
            else:
                job.future.set_result({"user": job.op.user, "events": counts[job.op.user]})

    def _apply(self, users: list[str], items: dict[str, torch.Tensor]) -> dict[str, UserEntry]:
        """New entries of ``users`` (nothing stored): known users stepped together, one event at a time;
        a user seen for the first time gets the whole history in one parallel pass (prefill)."""
        cached = {u: self.cache.get(u) for u in users}
        known = [u for u in users if cached[u] is not None]
        out = dict(zip(known, self.scorer.update([cached[u] for u in known], [items[u] for u in known]))) \
            if known else {}
        for u in users:
            if u not in out:
                out[u] = self.scorer.prefill(items[u])
        return out

    def _states(self, run: list[_Job]) -> list[UserEntry]:
        states = []
        for job in run:
            op = job.op
            if op.user_row is not None:  # retrieval: the user tower on the user's features, nothing stored
                states.append(self.scorer.user_entry(*op.user_row))
                continue
            if op.history is not None:  # explicit history: the no-cache path, nothing stored
                states.append(self.scorer.prefill(op.history))
                continue
            st = self.cache.get(op.user)
            if st is None:
                raise UnknownUser(f"unknown user {op.user!r}: send its events to /events first, or pass 'history'")
            states.append(st)
        return states

    def _score(self, run: list[_Job]) -> None:
        states = self._states(run)
        ops = [j.op for j in run]
        probs = self.scorer.score(states, [o.candidates for o in ops], _all_or_none([o.features for o in ops]))
        for job, p in zip(run, probs):
            job.future.set_result(p)

    def _recommend(self, run: list[_Job]) -> None:
        # one call per (exclude_seen, has candidates) group, at the largest k of the group
        groups: dict[tuple, list[_Job]] = {}
        for job in run:
            groups.setdefault((job.op.exclude_seen, job.op.candidates is not None), []).append(job)
        for (exclude, has_cands), jobs in groups.items():
            states = self._states(jobs)
            ops = [j.op for j in jobs]
            k = max(o.k for o in ops)
            out = self.scorer.topk(states, k, exclude, [o.candidates for o in ops] if has_cands else None,
                                   _all_or_none([o.features for o in ops]))
            for job, (ids, scores) in zip(jobs, out):
                job.future.set_result((ids[:job.op.k], scores[:job.op.k]))

    def _inspect(self, run: list[_Job]) -> None:
        for job in run:
            st = self.cache.peek(job.op.user)
            if st is None:
                job.future.set_exception(UnknownUser(f"unknown user {job.op.user!r}"))
            else:
                job.future.set_result({"user": job.op.user, "events": self.scorer.events_of(st),
                                       "state_bytes": st.state.nbytes, "seen_items": int(st.seen.numel()),
                                       "seen_bytes": st.seen.numel() * st.seen.element_size()})


def _all_or_none(xs):
    return None if any(x is None for x in xs) else xs
