module github.com/ssi-cluster/ssi

go 1.26.8

require (
	connectrpc.com/connect v1.21.1 // indirect
	google.golang.org/protobuf v1.36.11 // indirect
)
