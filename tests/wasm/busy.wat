;; A guest that works for a while and then succeeds: count(n) loops n times and returns n.
(module
  (memory (export "memory") 1)
  (func (export "count") (param $n i64) (result i64)
    (local $i i64)
    (block $done
      (loop $again
        (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $again)))
    (local.get $i)))
