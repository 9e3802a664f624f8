//! `.xz` decoding on every core. liblzma 5.4 and later decode the blocks of a multi-block file
//! (what `xz -T0` writes, and Raspberry Pi OS images are) on several threads; the liblzma bundled
//! with the `lzma-sys` crate is 5.2 and has no threaded decoder, but `lzma-sys` links the
//! system's liblzma when there is one. The threaded decoder is looked up at run time in the
//! liblzma the program runs with (`dlsym`), together with `lzma_code` and `lzma_end` of the same
//! library; without it, decoding falls back to xz2's single-threaded decoder. Both accept
//! concatenated streams.

use lzma_sys::{lzma_ret, lzma_stream};
use std::ffi::{c_char, c_void};
use std::io::{BufRead, Read};

/// `lzma_mt` as liblzma 5.4 declares it (`lzma/container.h`): 5.2's layout with
/// `reserved_int5` and `reserved_int6` become `memlimit_threading` and `memlimit_stop`.
#[repr(C)]
struct MtOptions {
    flags: u32,
    threads: u32,
    block_size: u64,
    timeout: u32,
    preset: u32,
    filters: *const c_void,
    check: std::ffi::c_int,
    reserved_enum1: std::ffi::c_int,
    reserved_enum2: std::ffi::c_int,
    reserved_enum3: std::ffi::c_int,
    reserved_int1: u32,
    reserved_int2: u32,
    reserved_int3: u32,
    reserved_int4: u32,
    memlimit_threading: u64,
    memlimit_stop: u64,
    reserved_int7: u64,
    reserved_int8: u64,
    reserved_ptr1: *mut c_void,
    reserved_ptr2: *mut c_void,
    reserved_ptr3: *mut c_void,
    reserved_ptr4: *mut c_void,
}

type DecoderMt = unsafe extern "C" fn(*mut lzma_stream, *const MtOptions) -> lzma_ret;
type Code = unsafe extern "C" fn(*mut lzma_stream, lzma_sys::lzma_action) -> lzma_ret;
type End = unsafe extern "C" fn(*mut lzma_stream);

/// The threaded decoder's entry points, from one library, when the program runs with one.
#[derive(Clone, Copy)]
struct Lib {
    decoder_mt: DecoderMt,
    code: Code,
    end: End,
}

fn lib() -> Option<Lib> {
    fn sym(name: &std::ffi::CStr) -> Option<*mut c_void> {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the name up.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr() as *const c_char) };
        (!p.is_null()).then_some(p)
    }
    let decoder_mt = sym(c"lzma_stream_decoder_mt")?;
    let code = sym(c"lzma_code")?;
    let end = sym(c"lzma_end")?;
    // SAFETY: the symbols are liblzma's functions of these C signatures (lzma/container.h,
    // lzma/base.h), all three resolved in the same search order.
    unsafe {
        Some(Lib {
            decoder_mt: std::mem::transmute::<*mut c_void, DecoderMt>(decoder_mt),
            code: std::mem::transmute::<*mut c_void, Code>(code),
            end: std::mem::transmute::<*mut c_void, End>(end),
        })
    }
}

/// Whether `.xz` input is decoded on several threads here.
pub fn threaded() -> bool {
    lib().is_some()
}

/// A reader of the decompressed bytes of the `.xz` (one or more concatenated streams) `input`.
pub fn decoder<'a>(input: impl BufRead + 'a) -> Box<dyn Read + 'a> {
    match lib().and_then(Stream::new) {
        Some(strm) => Box::new(MtDecoder {
            input,
            strm,
            done: false,
        }),
        None => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(input)),
    }
}

/// A threaded decoder's state, ended on drop.
struct Stream {
    raw: Box<lzma_stream>,
    lib: Lib,
}

// SAFETY: the stream is used from one thread at a time (through &mut); liblzma's own threads
// are internal to it.
unsafe impl Send for Stream {}

impl Stream {
    fn new(lib: Lib) -> Option<Stream> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        // A quarter of the memory for the threads' buffers; past it liblzma decodes on one.
        // SAFETY: sysconf only reads system values.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let memlimit_threading = if pages > 0 && page > 0 {
            (pages as u64).saturating_mul(page as u64) / 4
        } else {
            1 << 30
        };
        // SAFETY: all-zero is LZMA_STREAM_INIT and a valid (empty) lzma_mt.
        let mut raw: Box<lzma_stream> = Box::new(unsafe { std::mem::zeroed() });
        let mut opts: MtOptions = unsafe { std::mem::zeroed() };
        opts.flags = lzma_sys::LZMA_CONCATENATED;
        opts.threads = threads;
        opts.memlimit_threading = memlimit_threading;
        opts.memlimit_stop = u64::MAX;
        // SAFETY: raw is a zeroed lzma_stream and opts a filled lzma_mt that outlives the call.
        let ret = unsafe { (lib.decoder_mt)(&mut *raw, &opts) };
        let strm = Stream { raw, lib };
        (ret == lzma_sys::LZMA_OK).then_some(strm)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream was set up by this library's decoder (or is still zeroed, which
        // lzma_end accepts).
        unsafe { (self.lib.end)(&mut *self.raw) }
    }
}

struct MtDecoder<R> {
    input: R,
    strm: Stream,
    done: bool,
}

impl<R: BufRead> Read for MtDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Error, ErrorKind};
        if out.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            let inbuf = self.input.fill_buf()?;
            let eof = inbuf.is_empty();
            let raw = &mut *self.strm.raw;
            raw.next_in = inbuf.as_ptr();
            raw.avail_in = inbuf.len();
            raw.next_out = out.as_mut_ptr();
            raw.avail_out = out.len();
            let action = if eof {
                lzma_sys::LZMA_FINISH
            } else {
                lzma_sys::LZMA_RUN
            };
            // SAFETY: next_in/next_out point into live buffers of avail_in/avail_out bytes.
            let ret = unsafe { (self.strm.lib.code)(raw, action) };
            let consumed = inbuf.len() - raw.avail_in;
            let produced = out.len() - raw.avail_out;
            raw.next_in = std::ptr::null();
            raw.next_out = std::ptr::null_mut();
            self.input.consume(consumed);
            match ret {
                lzma_sys::LZMA_STREAM_END => {
                    self.done = true;
                    return Ok(produced);
                }
                lzma_sys::LZMA_OK if produced > 0 => return Ok(produced),
                lzma_sys::LZMA_OK => continue,
                lzma_sys::LZMA_BUF_ERROR if eof => {
                    return Err(Error::new(
                        ErrorKind::UnexpectedEof,
                        "the .xz data ends early (truncated file?)",
                    ))
                }
                lzma_sys::LZMA_BUF_ERROR => continue,
                lzma_sys::LZMA_MEM_ERROR | lzma_sys::LZMA_MEMLIMIT_ERROR => {
                    return Err(Error::other("out of memory decoding .xz data"))
                }
                lzma_sys::LZMA_FORMAT_ERROR => {
                    return Err(Error::new(ErrorKind::InvalidData, "not .xz data"))
                }
                lzma_sys::LZMA_DATA_ERROR | lzma_sys::LZMA_OPTIONS_ERROR => {
                    return Err(Error::new(ErrorKind::InvalidData, "corrupt .xz data"))
                }
                other => return Err(Error::other(format!("liblzma error {other}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        // Compressible but not trivial: 12 MiB of text-like lines.
        let mut v = Vec::new();
        let mut i = 0u64;
        while v.len() < 12 << 20 {
            writeln!(v, "line {i} {}", i.wrapping_mul(2654435761) % 1000).unwrap();
            i += 1;
        }
        v
    }

    fn xz(data: &[u8], args: &[&str]) -> Vec<u8> {
        let mut child = std::process::Command::new("xz")
            .args(args)
            .args(["-c", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("xz runs");
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn decode(packed: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(std::io::BufReader::new(packed)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn multi_block_single_block_and_concatenated_streams_decode_to_the_input() {
        let data = sample();
        // Several blocks (what `xz -T0` makes and the threaded decoder spreads over cores).
        let blocks = xz(&data, &["-T2", "--block-size=1MiB", "-1"]);
        assert_eq!(decode(&blocks).unwrap(), data);
        // One block, one stream.
        let single = xz(&data, &["-T1", "-1"]);
        assert_eq!(decode(&single).unwrap(), data);
        // Two streams back to back.
        let mut two = blocks.clone();
        two.extend(xz(b"tail", &["-1"]));
        let mut want = data.clone();
        want.extend(b"tail");
        assert_eq!(decode(&two).unwrap(), want);
    }

    #[test]
    fn truncated_and_corrupt_input_fail() {
        let data = sample();
        let packed = xz(&data, &["-T2", "--block-size=1MiB", "-1"]);
        let cut = &packed[..packed.len() / 2];
        assert!(
            decode(cut).is_err(),
            "a truncated .xz decoded without error"
        );
        let mut bad = packed.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(decode(&bad).is_err(), "a corrupt .xz decoded without error");
        assert!(decode(b"not xz at all").is_err());
    }

    #[test]
    fn this_build_decodes_on_several_threads_where_liblzma_can() {
        // The build host's liblzma (5.4 here) has the threaded decoder; a 5.2 one would not.
        let v = unsafe { std::ffi::CStr::from_ptr(lzma_version_string()) };
        let v = v.to_string_lossy();
        let (major, minor) = {
            let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
            (it.next().unwrap_or(0), it.next().unwrap_or(0))
        };
        assert_eq!(threaded(), (major, minor) >= (5, 4), "liblzma {v}");
    }

    extern "C" {
        fn lzma_version_string() -> *const c_char;
    }
}
