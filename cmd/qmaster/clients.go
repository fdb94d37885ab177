package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

type clientsOptions struct {
	IO     *factory
	Client clientOptions

	JSON bool
}

func newCmdClients(f *factory, runF func(*clientsOptions) error) *cobra.Command {
	opts := &clientsOptions{IO: f}
	cmd := &cobra.Command{
		Use:   "clients [flags]",
		Short: "List the clients connected to a master",
		Long: `List the clients connected to the master, this command included; through
a gateway of a cluster, those of every gateway:

  GATEWAY    (a cluster's) the gateway the client is connected to: the
             node's name, or a --nats gateway's host:port
  ID         the master's (or gateway's) number for the connection
  ADDR       the client's address
  ROLE       worker, producer or admin, as the client says; python for a
             Python BaseManager client (NAME is then its process name)
  NAME       the client's name for itself (qworker uses host:pid)
  KEY        the key it authenticated with: a name of the --acl file, or
             "authkey" for the shared key
  IN-FLIGHT  tasks leased to the client and not yet acknowledged
  LAST-SEEN  time since its last request
  CONNECTED  time since it connected`,
		Example: `  qmaster clients
  qmaster clients --json | jq '.[] | select(.role == "worker") | .name'`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.Client.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return clientsRun(cmd.Context(), opts)
		},
	}
	addClientFlags(cmd, &opts.Client)
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the clients as a JSON array")
	return cmd
}

func clientsRun(ctx context.Context, opts *clientsOptions) error {
	c, err := opts.Client.connect(ctx, opts.IO, "admin", "clients")
	if err != nil {
		return err
	}
	defer c.Close()
	clients, note, err := c.ClientsNoted(ctx)
	if err != nil {
		return fmt.Errorf("list clients: %w", err)
	}
	if note != "" {
		fmt.Fprintf(opts.IO.ErrOut, "qmaster clients: %s\n", note)
	}
	if opts.JSON {
		if clients == nil {
			clients = []wire.ClientInfo{}
		}
		return writeJSON(opts.IO.Out, clients, opts.IO.StdoutTTY)
	}
	return writeClientsTable(opts.IO.Out, clients, time.Now())
}

// writeClientsTable writes clients as a table: with a GATEWAY column
// first when they are a cluster's, whose gateways number their clients
// each on its own.
func writeClientsTable(w io.Writer, clients []wire.ClientInfo, now time.Time) error {
	gateways := slices.ContainsFunc(clients, func(c wire.ClientInfo) bool { return c.Gateway != "" })
	tw := newTable(w)
	if gateways {
		fmt.Fprint(tw, "GATEWAY\t")
	}
	fmt.Fprintln(tw, "ID\tADDR\tROLE\tNAME\tKEY\tIN-FLIGHT\tLAST-SEEN\tCONNECTED")
	for _, c := range clients {
		if gateways {
			fmt.Fprintf(tw, "%s\t", dash(c.Gateway))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s ago\t%s ago\n", c.ID, c.Addr, dash(c.Role), dash(c.Name), dash(c.Key), c.InFlight,
			humanAge(now.Sub(c.LastSeen)), humanAge(now.Sub(c.Since)))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
