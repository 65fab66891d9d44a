import pytest

from fastswitch.cache import BlockManager


def test_growth_extends_the_last_group_in_place():
    m = BlockManager(num_blocks=64, block_size=4)
    m.ensure_capacity("a", 5)  # 2 blocks
    assert m.block_table("a") == [0, 1]
    for tokens in range(6, 40):
        m.ensure_capacity("a", tokens)
    assert m.num_groups("a") == 1
    assert m.block_table("a") == list(range(10))
    assert m.num_free == 54


def test_blocks_needed_and_can_fit():
    m = BlockManager(num_blocks=8, block_size=16)
    assert m.blocks_needed("x", 0) == 0
    assert m.blocks_needed("x", 17) == 2
    m.ensure_capacity("x", 17)
    assert m.blocks_needed("x", 32) == 0 and m.blocks_needed("x", 33) == 1
    assert m.can_fit("x", 8 * 16) and not m.can_fit("x", 8 * 16 + 1)
    assert m.can_fit("y", 6 * 16) and not m.can_fit("y", 6 * 16 + 1)


def test_new_group_when_the_blocks_behind_are_taken():
    m = BlockManager(num_blocks=10, block_size=1)
    m.ensure_capacity("a", 1)
    m.ensure_capacity("b", 1)  # lands in the middle of the 8 blocks of slack behind "a": at 5
    assert m.block_table("b") == [5]
    added = m.ensure_capacity("a", 6)  # 5 more: "a" first uses the 4 blocks behind it, then a new group
    assert added[0] == (1, 4) and len(added) == 2 and added[1][1] == 1
    assert m.num_groups("a") == 2 and m.block_table("a")[:5] == [0, 1, 2, 3, 4]
    assert set(m.block_table("a")).isdisjoint(m.block_table("b"))


def test_ensure_capacity_failure_changes_nothing():
    m = BlockManager(num_blocks=4, block_size=2)
    m.ensure_capacity("a", 4)
    with pytest.raises(ValueError, match=r"'b'.*num_free=2"):
        m.ensure_capacity("b", 5)
    assert not m.has("b") and m.num_free == 2


def test_free_and_truncate_return_blocks():
    m = BlockManager(num_blocks=16, block_size=2)
    m.ensure_capacity(7, 12)
    assert m.truncate(7, 2) == [(2, 4)]
    assert m.block_table(7) == [0, 1] and m.num_free == 14
    m.free(7)
    assert not m.has(7) and m.num_free == 16
    with pytest.raises(ValueError, match="unknown sequence 7"):
        m.free(7)
    with pytest.raises(ValueError, match="unknown sequence"):
        m.block_table(7)


def test_vllm_mode_gives_one_group_per_block():
    m = BlockManager(num_blocks=16, block_size=4, block_groups=False)
    for tokens in range(1, 25):
        m.ensure_capacity("a", tokens)
    assert m.num_groups("a") == 6
    assert len(set(m.block_table("a"))) == 6


def test_ensure_capacity_returns_the_added_runs():
    m = BlockManager(num_blocks=32, block_size=4)
    assert m.ensure_capacity("a", 8) == [(0, 2)]
    assert m.ensure_capacity("a", 12) == [(2, 1)]
    assert m.ensure_capacity("a", 12) == []


def test_a_returned_block_table_is_the_callers_own():
    m = BlockManager(num_blocks=16, block_size=4, block_groups=False)
    m.ensure_capacity("a", 8)
    table = m.block_table("a")
    table.append(99)
    table[0] = -1
    assert m.block_table("a") == [0, 1] and m.num_blocks_of("a") == 2
    m.ensure_capacity("a", 12)
    assert table == [-1, 1, 99] and m.block_table("a") == [0, 1, 2]
