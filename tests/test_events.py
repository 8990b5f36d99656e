"""Tests of kacnum.processes.events: the event-driven simulation shared by the Kac process and the planar
flight (docs/mathematics.md §1 and §14).

The draw order is checked by replaying the generator by hand (the sign, then the holding times, then the
angles); the paths are checked to be piecewise linear at speed ``c`` with the velocities of their rule.
"""
import math

import pytest
import torch

from kacnum.processes import events
from kacnum.processes.events import AlternatingSigns, EventPaths, UniformDirections, simulate_event_paths
from kacnum.processes.flight import FlightPaths, PlanarFlight
from kacnum.processes.kac import KacPaths, KacProcess

F32, F64 = torch.float32, torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _block(rate, t_end):
    """Holding times drawn per path and block (as documented in events._event_times)."""
    return int(rate * t_end + 6.0 * math.sqrt(rate * t_end + 1.0) + 8)


def test_processes_are_thin_callers():
    grid = [0.0, 0.2, 0.7, 1.5]
    kac = KacProcess(4.0, 2.0).simulate_paths(grid, 64, generator=_gen(1))
    ref = simulate_event_paths(grid, 64, 4.0, AlternatingSigns(2.0), generator=_gen(1))
    assert isinstance(kac, KacPaths)
    for a, b in ((kac.positions, ref.positions), (kac.velocities, ref.velocities), (kac.switch_counts, ref.event_counts)):
        assert torch.equal(a, b)
    flight = PlanarFlight(4.0, 2.0).simulate_paths(grid, 64, generator=_gen(1), dtype=F32)
    ref = simulate_event_paths(grid, 64, 4.0, UniformDirections(2.0), generator=_gen(1), dtype=F32)
    assert isinstance(flight, FlightPaths) and isinstance(flight, EventPaths)
    assert flight.positions.dtype == F32 and flight.positions.shape == (64, 4, 2)
    for a, b in ((flight.positions, ref.positions), (flight.velocities, ref.velocities), (flight.event_counts, ref.event_counts)):
        assert torch.equal(a, b)
    assert torch.equal(flight.atom_mask, flight.event_counts == 0)


def test_kac_draw_order_sign_then_holding_times():
    """Kac: n uniforms for the sign (U < 1/2 is -1), then the first block of holding times -log(1 - U)/a."""
    a, c, n, t_end = 3.0, 2.0, 200, 0.8
    grid = torch.linspace(0.0, t_end, 9, dtype=F64)
    sim = simulate_event_paths(grid, n, a, AlternatingSigns(c), generator=_gen(7))
    g = _gen(7)
    sign = torch.where(torch.rand(n, generator=g, dtype=F64) < 0.5, -1.0, 1.0).to(F64)
    first = -torch.log1p(-torch.rand(n, _block(a, t_end), generator=g, dtype=F64)[:, 0]) / a
    before = grid[None, :] < first[:, None]
    assert torch.equal(sim.event_counts == 0, before)
    # before the first switch the path runs straight at S c
    assert torch.equal(sim.velocities[before], (sign[:, None] * c).expand(-1, grid.numel())[before])
    assert torch.allclose(sim.positions[before], (sign[:, None] * c * grid[None, :]).expand(n, -1)[before], rtol=0, atol=1e-15)


def test_flight_draw_order_holding_times_then_angles():
    """Flight: the holding times first (one block suffices here), then one angle per segment."""
    lam, c, n, t_end = 2.0, 1.5, 100, 0.5
    sim = simulate_event_paths([t_end], n, lam, UniformDirections(c), generator=_gen(3))
    g = _gen(3)
    m = _block(lam, t_end)
    u = torch.rand(n, m, generator=g, dtype=F64)
    theta0 = 2.0 * math.pi * torch.rand(n, m + 1, generator=g, dtype=F64)[:, 0]
    first = -torch.log1p(-u[:, 0]) / lam
    still = first > t_end
    assert torch.equal(sim.atom_mask[:, 0], still)
    straight = c * t_end * torch.stack([torch.cos(theta0), torch.sin(theta0)], dim=-1)
    assert torch.allclose(sim.positions[still, 0], straight[still], rtol=0, atol=1e-14)


@pytest.mark.parametrize("steering", [AlternatingSigns(2.5), UniformDirections(2.5)])
def test_paths_move_at_speed_c(steering):
    grid = torch.linspace(0.0, 2.0, 41, dtype=F64)
    sim = simulate_event_paths(grid, 300, 5.0, steering, generator=_gen(11))
    pos, vel = sim.positions, sim.velocities
    if pos.dim() == 2:
        pos, vel = pos[..., None], vel[..., None]
    speed = vel.norm(dim=-1)
    assert torch.allclose(speed, torch.full_like(speed, 2.5), rtol=1e-14, atol=0)
    assert torch.equal(pos[:, 0], torch.zeros_like(pos[:, 0]))
    step = (pos[:, 1:] - pos[:, :-1]).norm(dim=-1)
    assert bool((step <= 2.5 * (grid[1] - grid[0]) * (1 + 1e-12)).all())
    assert bool((sim.event_counts[:, 1:] >= sim.event_counts[:, :-1]).all())
    # no event within a grid step: exactly a straight move at the grid velocity
    calm = sim.event_counts[:, 1:] == sim.event_counts[:, :-1]
    straight = pos[:, :-1] + vel[:, :-1] * (grid[1] - grid[0])
    assert torch.allclose(pos[:, 1:][calm], straight[calm], rtol=0, atol=1e-12)
    # on the atoms the path sits on the boundary of its ball
    norm = pos.norm(dim=-1)
    ct = (2.5 * grid).expand_as(norm)
    assert torch.allclose(norm[sim.atom_mask], ct[sim.atom_mask], rtol=1e-13, atol=0)


def test_event_times_draw_further_blocks_until_past_the_end():
    """If the first block does not reach max(time_grid), further blocks of holding times follow."""
    calls = []

    def tiny(*size):  # holding times of about 1e-3 / rate: several blocks are needed
        calls.append(size)
        return torch.full(size, 1e-3, dtype=F64)

    like = torch.zeros((), dtype=F64)
    times = events._event_times(3, 1.0, 0.5, tiny, like)
    m = _block(1.0, 0.5)
    assert len(calls) > 1 and all(sz == (3, m) for sz in calls) and times.shape == (3, len(calls) * m)
    # whole blocks: the last one passes the end, the one before does not
    assert bool((times[:, -1] > 0.5).all()) and bool((times[:, -m - 1] <= 0.5).all())
    assert bool((torch.diff(times, dim=1) > 0).all())


def test_unsorted_grid_and_float32():
    grid = [1.0, 0.0, 0.5, 1.0]
    sim = simulate_event_paths(grid, 50, 3.0, AlternatingSigns(1.0), generator=_gen(2), dtype=F32)
    assert sim.positions.dtype == F32 and sim.times.dtype == F32
    assert torch.equal(sim.positions[:, 0], sim.positions[:, 3])
    assert torch.equal(sim.positions[:, 1], torch.zeros(50, dtype=F32))


def test_bad_arguments_name_the_parameter():
    rule = AlternatingSigns(1.0)
    cases = [
        (lambda: simulate_event_paths([0.5], 0, 1.0, rule), r"^n \(number of paths\)"),
        (lambda: simulate_event_paths([0.5], 2.5, 1.0, rule), r"^n \(number of paths\)"),
        (lambda: simulate_event_paths([0.5], True, 1.0, rule), r"^n \(number of paths\)"),
        (lambda: simulate_event_paths([0.5], 4, 1.0, rule, dtype=torch.float16), r"^dtype must be"),
        (lambda: simulate_event_paths([], 4, 1.0, rule), r"^time_grid must be a non-empty 1D"),
        (lambda: simulate_event_paths([[0.5]], 4, 1.0, rule), r"^time_grid must be a non-empty 1D"),
        (lambda: simulate_event_paths([-0.5], 4, 1.0, rule), r"^time_grid must lie in"),
        (lambda: simulate_event_paths([math.nan], 4, 1.0, rule), r"^time_grid must be finite"),
        (lambda: simulate_event_paths([0.5], 4, 0.0, rule), r"^rate \(event rate\)"),
        (lambda: KacProcess().simulate_paths([0.5], 2.5), r"^n \(number of paths\)"),
        (lambda: KacProcess().simulate_paths([0.5], 3, dtype=torch.float16), r"^dtype must be"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
