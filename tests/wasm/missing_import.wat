;; missing_import: imports a host function no supervisor provides, so
;; instantiation must fail cleanly.
(module
  (import "nosuch" "thing" (func $thing))
  (memory (export "memory") 1)
  (func (export "run")
    (call $thing)))
