import pytest
import torch

from fastswitch.cache import KVCache


def small_cache(**overrides) -> KVCache:
    args = dict(num_blocks=6, num_layers=3, block_size=4, num_kv_heads=2, head_dim=8, dtype=torch.float32)
    return KVCache(**{**args, **overrides})


def test_layout_is_block_major_and_zeroed():
    c = small_cache()
    assert c.data.shape == (6, 3, 2, 4, 2, 8)
    assert c.data.is_contiguous()
    assert torch.count_nonzero(c.data) == 0


def test_layer_views_alias_the_right_slice():
    c = small_cache()
    k, v = c.key(1), c.value(1)
    assert k.shape == (6, 4, 2, 8) and v.shape == (6, 4, 2, 8)
    k[2, 3, 1, 5] = 7.0
    v[2, 3, 1, 5] = -7.0
    assert c.data[2, 1, 0, 3, 1, 5] == 7.0 and c.data[2, 1, 1, 3, 1, 5] == -7.0
    assert torch.count_nonzero(c.data) == 2


def test_a_run_of_blocks_is_one_contiguous_byte_range():
    c = small_cache()
    view = c.data[2:5]  # what copy_blocks and the copy engine move in one call
    assert view.is_contiguous()
    assert view.data_ptr() == c.data.data_ptr() + 2 * c.block_bytes
    assert view.numel() * view.element_size() == 3 * c.block_bytes


def test_sizes():
    c = small_cache(dtype=torch.float16)
    assert c.block_bytes == 3 * 2 * 4 * 2 * 8 * 2
    assert c.num_bytes == 6 * c.block_bytes


def test_dtype_by_name():
    assert small_cache(dtype="bfloat16").data.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        small_cache(dtype="float17")


def test_host_pool_matches_the_device_cache():
    c = small_cache()
    host = KVCache.host_pool_for(c, num_blocks=10)
    assert host.data.shape[1:] == c.data.shape[1:] and host.num_blocks == 10
    assert host.device.type == "cpu"
    assert host.pinned == torch.cuda.is_available()


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="head_dim"):
        small_cache(head_dim=0)
    with pytest.raises(ValueError, match="layer=3"):
        small_cache().key(3)
    with pytest.raises(ValueError, match=r"block 6 is outside 0\.\.5"):
        small_cache().copy_blocks([5, 6], [0, 1])
    with pytest.raises(ValueError, match=r"block -1 is outside 0\.\.5"):
        small_cache().copy_blocks([0], [-1])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory"):
            small_cache(pin_memory=True)
