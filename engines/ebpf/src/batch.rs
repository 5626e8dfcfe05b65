//! Batched map operations, which aya 0.14 lacks: `BPF_MAP_UPDATE_BATCH` writes many
//! entries of a hash map in one syscall, `BPF_MAP_LOOKUP_BATCH` reads a whole map in a
//! few (kernel 5.6). A full sync writes every backend slot and service entry through
//! them, and every reread (a full sync's adoption, `verify`) reads through them: at 50k
//! services one element at a time is ≈ 600k syscalls to read the maps back and 300k to
//! write them (figures in BENCHMARKS.md).
//!
//! The kernel applies a batch's elements in order, one by one (each atomic for a
//! reader), so a batch keeps the dataplane's write order.
//!
//! The second place with `unsafe` in this crate (after `layout`): the `bpf(2)` syscall
//! with a `bpf_attr` built here. Each use documents why it holds.
#![allow(unsafe_code)]

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;
use nix::libc;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Elements per lookup call: larger than any hash bucket holds (the kernel refuses a
/// batch smaller than the bucket it is reading: ENOSPC).
const LOOKUP_CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr` (`linux/bpf.h`): every field 8-byte aligned as
/// the kernel's `__aligned_u64`, no implicit padding. A prefix of the union is enough:
/// the kernel zero-fills what is not passed.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `BatchAttr` for the duration of the call, its
    // size is passed, and every pointer in it was set by our caller to a live buffer of
    // the size its `count` says (see `update` and `lookup_all`).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `keys[i]` → `values[i]` (any flags: create or replace), in order.
pub(crate) fn update<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    while done < keys.len() {
        let (k, v) = (&keys[done..], &values[done..]);
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: u32::try_from(k.len()).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // The kernel reports how many it wrote in `count`, also on error.
        let r = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        done += attr.count as usize;
        r?;
        if attr.count == 0 {
            return Err(io::Error::other("the kernel wrote no element of the batch"));
        }
    }
    Ok(())
}

/// Every entry of a hash map, read in batches.
pub(crate) fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys: Vec<K> = Vec::with_capacity(LOOKUP_CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(LOOKUP_CHUNK);
    // The batch token of a hash map is a bucket index (u32); room for 8 bytes.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token_in as *mut u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(LOOKUP_CHUNK);
        // SAFETY: the kernel wrote `n` (≤ capacity) complete keys and values into the
        // buffers; `K` and `V` are `Pod` (any bytes are a valid value).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        match r {
            Ok(()) => {}
            // ENOENT: no more entries (the last batch may still have carried some).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}
