;; wasi_hello: run() writes "hello\n" to stdout through WASI fd_write.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: {buf = 16, len = 6}; bytes written go to 8; text at 16
  (data (i32.const 0) "\10\00\00\00\06\00\00\00")
  (data (i32.const 16) "hello\n")
  (func (export "run")
    (drop
      (call $fd_write
        (i32.const 1)    ;; stdout
        (i32.const 0)    ;; iovs
        (i32.const 1)    ;; iovs_len
        (i32.const 8)))));; nwritten
