;; spin: never returns (for timeout/epoch tests); ok() proves the instance still works.
(module
  (memory (export "memory") 1)
  (func (export "spin")
    (loop $forever
      (br $forever)))
  (func (export "ok") (result i32)
    (i32.const 7)))
