"""The event-log byte format (tdpfast.events): a header (magic, format version, the
event vocabulary's size and CRC, the record count), the records, and a BLAKE2b
checksum; tdpfast.read_event_log() reads it back and refuses anything else."""
from __future__ import annotations

import struct

import pytest

import tdpfast
from tdpfast import EventLogError, Policy, VM, read_event_log
from tdpfast import events as ev
from tdpfast.reference.vm import VM as RefVM


def _vm(cls=VM) -> VM:
    vm = cls(vcpus=2, pcpus=2, record=True, policy=Policy.named("no-flush-on-migrate"))
    vm.add_memslot(0, 1024, max_level=1)
    vm.vcpu_run(0, 0)
    vm.vcpu_run(1, 1)
    vm.access(0, 0x5000, "w")
    vm.access_batch(1, [g << 12 for g in range(20)], ["r", "w", "x", "xu"] * 5)
    vm.vcpu_run(0, 1)
    vm.host_unmap(5, 6)
    op = vm.start_op("kvm_zap_gfn_range", 0, 1024, yield_every=4)
    op.step()
    vm.vcpu_run(0, 0)
    vm.access(0, 0x5000, "r")
    op.finish()
    return vm


def test_the_log_has_a_header_and_a_checksum_and_reads_back():
    vm = _vm()
    log = vm.event_log()
    magic, version, kinds, crc, count = struct.unpack_from("<8sHHIQ", log)
    assert (magic, version, count) == (b"TDPEVLOG", ev.LOG_VERSION, len(vm.events))
    assert kinds == max(ev.EVENT_NAMES) + 1 and crc == ev.vocabulary_crc()
    events = read_event_log(log)
    assert events == vm.events and [e.raw for e in events] == [e.raw for e in vm.events]
    again = vm.fresh()
    again.replay(events)
    assert again.digest() == vm.digest() and again.event_log() == log
    assert tdpfast.read_event_log is read_event_log


def test_an_empty_log_is_a_header_and_a_checksum():
    log = VM().event_log()
    assert len(log) == 24 + 8 and read_event_log(log) == []


def test_the_reference_model_writes_the_same_bytes():
    assert _vm(RefVM).event_log() == _vm().event_log()


def test_truncated_logs_are_refused():
    log = _vm().event_log()
    for cut in (1, 8, 9, 100, len(log) - 30, len(log) - 1):
        with pytest.raises(EventLogError):
            read_event_log(log[:cut])


def test_every_corrupted_byte_is_noticed():
    log = _vm().event_log()
    for i in range(0, len(log), 7):
        bad = bytearray(log)
        bad[i] ^= 0x40
        with pytest.raises(EventLogError):
            read_event_log(bytes(bad))


def test_a_record_count_that_lies_is_refused_even_with_a_valid_checksum():
    log = _vm().event_log()
    body = bytearray(log[:-8])
    struct.pack_into("<Q", body, 16, struct.unpack_from("<Q", body, 16)[0] - 1)
    with pytest.raises(EventLogError, match="bytes after its"):
        read_event_log(bytes(body) + ev._checksum(bytes(body)))
    struct.pack_into("<Q", body, 16, 10 ** 6)
    with pytest.raises(EventLogError, match="truncated"):
        read_event_log(bytes(body) + ev._checksum(bytes(body)))


@pytest.mark.parametrize("data,msg", [
    (b"", "shorter than"),
    (b"hello world, this is not a log!!!", "not an event log"),
    ("TDPEVLOG", "is bytes, got str"),
    (None, "is bytes, got NoneType"),
])
def test_foreign_input_is_refused(data, msg):
    with pytest.raises(EventLogError, match=msg):
        read_event_log(data)


def test_another_format_version_or_vocabulary_is_refused():
    log = _vm().event_log()
    for offset, fmt, value, msg in ((8, "<H", 2, "version 2 is not supported"),
                                    (10, "<H", 40, "another event vocabulary"),
                                    (12, "<I", 1234, "another event vocabulary")):
        body = bytearray(log[:-8])
        struct.pack_into(fmt, body, offset, value)
        with pytest.raises(EventLogError, match=msg):
            read_event_log(bytes(body) + ev._checksum(bytes(body)))


def test_an_unknown_event_code_or_access_kind_is_refused():
    body = ev._HEADER.pack(ev.LOG_MAGIC, ev.LOG_VERSION, max(ev.EVENT_NAMES) + 1, ev.vocabulary_crc(), 1)
    body += struct.pack("<B5Q", 200, 0, 0, 0, 0, 0)
    with pytest.raises(EventLogError, match="record 0: unknown event code 200"):
        read_event_log(body + ev._checksum(body))
    body = ev._HEADER.pack(ev.LOG_MAGIC, ev.LOG_VERSION, max(ev.EVENT_NAMES) + 1, ev.vocabulary_crc(), 1)
    body += struct.pack("<B5Q", ev.EVENT_CODES["access_batch"], 0, 0, 1, 0, 0) + struct.pack("<QB", 0x1000, 9)
    with pytest.raises(EventLogError, match="access kind 9"):
        read_event_log(body + ev._checksum(body))
