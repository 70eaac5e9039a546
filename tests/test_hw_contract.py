"""Strict arguments of tdpfast.hw (issue 11): the page must be bytes, booleans are booleans,
and the message names the bad element."""
import array

import pytest

from tdpfast import InvalidArgumentError, MalformedImageError, VM, hw


@pytest.fixture(scope="module")
def image():
    vm = VM(arch="vmx")
    vm.add_memslot(0, 512, max_level=1)
    vm.vcpu_run(0, 0)
    vm.access(0, 0x1000, "w")
    return vm.mmu.tables(), vm.mmu.root_pointer()


def test_a_str_page_is_not_bytes():
    with pytest.raises(MalformedImageError) as e:
        hw.walk({0x1000: "a" * 4096}, hw.eptp(0x1000), 0)
    msg = str(e.value)
    assert "page 0x1000" in msg and "bytes" in msg and "got str" in msg
    assert "got 4096" not in msg


def test_the_bad_page_is_named(image):
    tables, pointer = image
    bad = dict(tables)
    victim = sorted(bad)[-1]
    bad[victim] = bytes(4095)
    with pytest.raises(MalformedImageError, match=f"page {victim:#x} must be 4096 bytes, got 4095"):
        hw.walk(bad, pointer, 0x1000)
    bad[victim] = list(bytes(4096))
    with pytest.raises(MalformedImageError, match=f"page {victim:#x} .*got list"):
        hw.walk(bad, pointer, 0x1000)


def test_a_memoryview_page_counts_bytes_not_items(image):
    tables, pointer = image
    words = {k: memoryview(array.array("I", bytes(v))) for k, v in tables.items()}   # 1024 items, 4096 bytes
    assert hw.walk(words, pointer, 0x1000) == hw.walk(tables, pointer, 0x1000)


@pytest.mark.parametrize("flag", ["ad", "exec_only", "user", "mbec", "paging_structure"])
@pytest.mark.parametrize("value", ["no", 1, 0, None])
def test_boolean_flags_take_booleans_only(image, flag, value):
    tables, pointer = image
    with pytest.raises(InvalidArgumentError, match=f"{flag} must be True or False, got {value!r}"):
        hw.walk(tables, pointer, 0x1000, **{flag: value})


def test_ad_no_does_not_turn_ad_on():
    with pytest.raises(InvalidArgumentError, match="ad must be True or False"):
        hw.eptp(0x1000, ad="no")
    assert hw.eptp(0x1000, ad=False) & (1 << 6) == 0


@pytest.mark.parametrize("kwargs,says", [
    (dict(root_hpa=0x1001), "4 KiB-aligned"), (dict(root_hpa=-1), "root_hpa"), (dict(root_hpa=True), "root_hpa"),
    (dict(root_hpa=0x1000, levels=3), "levels must be 4 or 5"),
    (dict(root_hpa=0x1000, memtype=7), "memtype"),
])
def test_eptp_checks_its_fields(kwargs, says):
    with pytest.raises(InvalidArgumentError, match=says):
        hw.eptp(**kwargs)


def test_choices_are_strings(image):
    tables, pointer = image
    with pytest.raises(InvalidArgumentError, match="access must be"):
        hw.walk(tables, pointer, 0x1000, ["r"])
    with pytest.raises(InvalidArgumentError, match="fmt must be"):
        hw.walk(tables, pointer, 0x1000, fmt=0)
