// Command visor is the Visor CLI and host agent.
package main

func main() {}
