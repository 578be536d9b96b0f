vendor/other/o.go
