;; hostile: guests that misbehave without looping or growing memory (see spin and membomb).
;; text(mib) returns mib MiB of "x" as a string (bytes ABI; it takes an integer, so no alloc);
;; file(mib) writes mib MiB to its output file output.bin through WASI and returns the errno;
;; noise(mib) writes mib MiB to stdout; trap() reaches unreachable; quit(code) calls
;; proc_exit(code); burn() loops until its fuel or time runs out; hog() grows its memory 1 MiB
;; at a time and writes every byte of it (so the pages are really resident) until the host
;; refuses, then traps.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  ;; page 0: the file name at 0, an iovec at 16, nwritten at 24, the opened fd at 32;
  ;; page 1: the 64 KiB chunk that file() and noise() write; text() grows past page 2.
  (memory (export "memory") 2)
  (data (i32.const 0) "output.bin")
  (func (export "text") (param $mib i32) (result i64)
    (local $len i32)
    (local.set $len (i32.shl (local.get $mib) (i32.const 20)))
    (if (i32.eq (memory.grow (i32.shl (local.get $mib) (i32.const 4))) (i32.const -1))
      (then unreachable))
    (memory.fill (i32.const 131072) (i32.const 120) (local.get $len))
    (i64.or (i64.shl (i64.const 131072) (i64.const 32)) (i64.extend_i32_u (local.get $len))))
  (func $write_all (param $fd i32) (param $mib i32) (result i32)
    (local $n i32) (local $err i32)
    (memory.fill (i32.const 65536) (i32.const 121) (i32.const 65536))
    (i32.store (i32.const 16) (i32.const 65536))
    (i32.store (i32.const 20) (i32.const 65536))
    (local.set $n (i32.shl (local.get $mib) (i32.const 4)))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $err
          (call $fd_write (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24)))
        (if (local.get $err) (then (return (local.get $err))))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func (export "file") (param $mib i32) (result i32)
    (local $err i32)
    ;; path_open(dirfd 3, no dirflags, "output.bin", O_CREAT|O_TRUNC, rights fd_write)
    (local.set $err
      (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 10)
        (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 32)))
    (if (local.get $err) (then (return (local.get $err))))
    (call $write_all (i32.load (i32.const 32)) (local.get $mib)))
  (func (export "noise") (param $mib i32) (result i32)
    (call $write_all (i32.const 1) (local.get $mib)))
  (func (export "trap")
    unreachable)
  (func (export "quit") (param $code i32)
    (call $exit (local.get $code)))
  (func (export "hog")
    (local $at i32)
    (loop $grow
      (local.set $at (memory.grow (i32.const 16)))
      (if (i32.ne (local.get $at) (i32.const -1))
        (then
          (memory.fill (i32.shl (local.get $at) (i32.const 16)) (i32.const 1) (i32.const 1048576))
          (br $grow))))
    unreachable)
  (func (export "burn")
    (loop $forever
      (br $forever))))
