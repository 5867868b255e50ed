module example.com/handoff-go-net-http

go 1.19
