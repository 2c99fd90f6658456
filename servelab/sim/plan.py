"""slo_aware's plan (server_variants/slo_aware.py), as the simulator runs it.

The server's rules, decision for decision, with one difference: the server refits its cost model
online from the passes it ran, while here the plan knows the simulated cost exactly (a linear fit
of it, t = a + k*b*L, the form the server fits). So a simulated plan is the server's plan with a
perfect cost model: where the two disagree, the server's model was wrong, or its own work (HTTP,
refusals) was not in it.

- admission: at arrival, the predicted answer time (the batch being computed, then the queue and
  this request, padded and cut into passes as recent passes were) against the budget.
- late alone: the oldest request, if it cannot be answered in time even by itself, gets its 504
  at once instead of being computed. Once admitted, a request is held to the objective less half
  the headroom, not the whole: the prediction is of one pass of known lengths.
- sizing: the largest FIFO prefix that the oldest request's budget allows, unless giving up the
  oldest (a 504 at once) answers more on time over the next two batches.
- sorting: the batch sorted by length and cut where a pass is worth its fixed cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from servelab.costmodel import CostModel, fit

PARTS = frozenset({"sizing", "sorting", "admission"})
SMOOTHING = 0.05  # the server's moving averages of padding and requests per pass
OBJECTIVE_PER_INPUT = 10  # the server's default objective: 10x one input's time
MIN_DEFAULT_OBJECTIVE_S = 0.020


@dataclass
class SloPlan:
    cost: CostModel
    slo_s: float
    headroom: float = 0.2
    max_batch_size: int = 256
    max_batch_tokens: int = 16384
    parts: frozenset = PARTS
    padding: float = 1.0  # padded / real tokens of recent passes
    per_pass: float = 1.0  # requests per recent pass

    @classmethod
    def for_policy(cls, policy, cost, lengths: Sequence[int]) -> SloPlan:
        """The plan a slo_aware server with `policy`'s settings makes on a device costing `cost`
        (a servelab.costmodel.BatchCost): its linear fit, and the objective given or, as the
        server does, 10x one input's time (the median input; at least 20 ms)."""
        grid = [{"batch_size": b, "tokens": n, "seconds": cost.seconds(b, n)}
                for b in (1, 4, 16, 64, 256) for n in (16, 32, 64)]
        model, _ = fit(grid)
        slo_s = policy.slo_s
        if slo_s is None:
            median = sorted(lengths)[len(lengths) // 2] if lengths else 16
            slo_s = max(MIN_DEFAULT_OBJECTIVE_S, OBJECTIVE_PER_INPUT * cost.seconds(1, median))
        return cls(model, slo_s, policy.slo_headroom, policy.max_batch_size or 256,
                   policy.max_batch_tokens or 16384, PARTS - set(policy.without))

    @property
    def budget_s(self) -> float:
        """What admission allows: the objective less the whole headroom."""
        return self.slo_s * (1 - self.headroom)

    @property
    def serve_budget_s(self) -> float:
        """What sizing allows a request already in: the objective less half the headroom."""
        return self.slo_s * (1 - self.headroom / 2)

    def seconds(self, passes: Sequence[Sequence[int]]) -> float:
        """Predicted time of these passes, given as lists of token lengths."""
        return sum(self.cost.seconds(len(p), max(p)) for p in passes)

    def predicted_done(self, now: float, busy_until: float, queued: int, queued_tokens: int,
                       tokens: int) -> float:
        passes = math.ceil((queued + 1) / self.per_pass)
        start = max(now, busy_until)
        return start + passes * self.cost.a + self.cost.k * self.padding * (queued_tokens + tokens)

    def refuses(self, arrival: float, now: float, busy_until: float, queued: int, queued_tokens: int,
                tokens: int) -> bool:
        """Admission: would this request be answered past its budget?"""
        if "admission" not in self.parts:
            return False
        return self.predicted_done(now, busy_until, queued, queued_tokens, tokens) > arrival + self.budget_s

    def late_even_alone(self, length: int, arrival: float, now: float) -> bool:
        return now + self.cost.seconds(1, length) > arrival + self.serve_budget_s

    def size(self, lengths: Sequence[int], arrivals: Sequence[float], now: float) -> tuple[int, int]:
        """Of the queue (oldest first): how many of the oldest to answer 504, and how many after
        them to compute. The oldest first, unless giving them up answers more on time over the
        next two batches (the server's Plan.size says why)."""
        _, late, size = self.most_on_time(lengths, arrivals, now)
        if not late:
            return 0, size
        keep = self.oldest_first(lengths, arrivals, now)
        if keep and (self.on_time_in_two_batches(lengths, arrivals, now, 0, keep)
                     >= self.on_time_in_two_batches(lengths, arrivals, now, late, size)):
            return 0, keep
        return late, size

    def passes_ending(self, lengths: Sequence[int], now: float) -> Iterator[tuple[int, float]]:
        longest = 0
        for size in range(1, min(len(lengths), self.max_batch_size) + 1):
            longest = max(longest, lengths[size - 1])
            if size > 1 and size * longest > self.max_batch_tokens:
                return
            yield size, now + self.cost.seconds(size, longest)

    def oldest_first(self, lengths: Sequence[int], arrivals: Sequence[float], now: float) -> int:
        deadline = arrivals[0] + self.serve_budget_s
        return max((size for size, done in self.passes_ending(lengths, now) if done <= deadline), default=0)

    def most_on_time(self, lengths: Sequence[int], arrivals: Sequence[float],
                     now: float) -> tuple[int, int, int]:
        best, late = (0, 0, 1), 0
        for size, done in self.passes_ending(lengths, now):
            while late < size and arrivals[late] + self.serve_budget_s < done:
                late += 1
            if size - late > best[0]:
                best = (size - late, late, size - late)
        return best

    def on_time_in_two_batches(self, lengths: Sequence[int], arrivals: Sequence[float], now: float,
                               late: int, size: int) -> int:
        end = late + size
        done = now + self.cost.seconds(size, max(lengths[late:end]))
        on_time = sum(arrival + self.serve_budget_s >= done for arrival in arrivals[late:end])
        if end == len(lengths):
            return on_time
        return on_time + self.most_on_time(lengths[end:], arrivals[end:], done)[0]

    def split(self, lengths: Sequence[int]) -> list[list[int]]:
        """Positions into `lengths`, sorted by length and cut into passes by the same dynamic
        programme as the server's (its cheapest cut at the points where the length changes)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        if "sorting" not in self.parts or len(order) == 1:
            return [list(range(len(lengths)))]
        a, k = self.cost.a, self.cost.k
        ends = [i for i in range(1, len(order)) if lengths[order[i]] != lengths[order[i - 1]]] + [len(order)]
        best = {0: (0.0, 0)}
        for end in ends:
            longest = lengths[order[end - 1]]
            best[end] = min((best[start][0] + a + k * (end - start) * longest, start)
                            for start in best if start < end)
        passes, end = [], len(order)
        while end:
            start = best[end][1]
            passes.append(order[start:end])
            end = start
        return passes[::-1]

    def observe(self, lengths: Sequence[int]) -> None:
        """One pass ran: the moving averages admission reads."""
        self.padding += SMOOTHING * (len(lengths) * max(lengths) / max(sum(lengths), 1) - self.padding)
        self.per_pass += SMOOTHING * (len(lengths) - self.per_pass)
