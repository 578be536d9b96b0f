vendor/lib/keep.go
