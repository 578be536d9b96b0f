vendor/lib/drop.go
