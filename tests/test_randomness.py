"""Randomness that does not depend on how the work is split: ranks' rows tile the global draw."""

import torch

from safemax_ray.core.randomness import RankRandom, chunk_generator, step_generator


def _draws(rank, world, step=3):
    rng = RankRandom(step_generator(7, step), rank, world)
    return rng.normal((4, 1, 2, 2)), rng.integers(100, 4), rng.uniform(4), rng.choice(torch.arange(50, 60), 4)


def test_two_ranks_tile_what_one_rank_draws():
    whole = _draws(0, 1)
    halves = [_draws(r, 2) for r in range(2)]  # each rank keeps 4 of the 8 global rows
    one = RankRandom(step_generator(7, 3), 0, 1)
    eight = one.normal((8, 1, 2, 2)), one.integers(100, 8), one.uniform(8), one.choice(torch.arange(50, 60), 8)
    for k in range(4):
        assert torch.equal(torch.cat([halves[0][k], halves[1][k]]), eight[k])
    assert not torch.equal(whole[0], halves[1][0])


def test_steps_and_chunks_get_distinct_replayable_streams():
    def draw(generator):
        return torch.rand(3, generator=generator)

    assert torch.equal(draw(step_generator(0, 5)), draw(step_generator(0, 5)))
    assert not torch.equal(draw(step_generator(0, 5)), draw(step_generator(0, 6)))
    assert not torch.equal(draw(step_generator(0, 5)), draw(chunk_generator(0, 5, 0)))
    assert not torch.equal(draw(chunk_generator(0, 5, 0)), draw(chunk_generator(0, 5, 1)))
    assert not torch.equal(draw(chunk_generator(0, 5, 0)), draw(chunk_generator(0, 6, 0)))


def test_choice_stays_in_the_pool():
    rng = RankRandom(step_generator(0, 0))
    drawn = rng.choice(torch.tensor([4, 5]), 50)
    assert len(drawn) == 50 and set(drawn.tolist()) == {4, 5}
