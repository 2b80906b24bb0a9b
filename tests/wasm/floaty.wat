;; floaty: scalar parameter and result conversions (f64 and negative i32).
(module
  (memory (export "memory") 1)
  (func (export "half") (param $x f64) (result f64)
    (f64.mul (local.get $x) (f64.const 0.5)))
  (func (export "neg") (param $x i32) (result i32)
    (i32.sub (i32.const 0) (local.get $x))))
