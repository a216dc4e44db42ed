// Package etcdwatch holds what every etcd watch loop in Visor needs and
// clientv3 does not give: a way to stop reading a watch channel as soon as
// its context ends.
package etcdwatch
