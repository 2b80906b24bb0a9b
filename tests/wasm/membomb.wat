;; membomb: bomb() grows memory by 16 pages (1 MiB) until the host refuses,
;; then traps; small() does nothing harmful.
(module
  (memory (export "memory") 1)
  (func (export "bomb")
    (loop $grow
      (br_if $grow
        (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
  (func (export "small") (result i32)
    (i32.const 1)))
