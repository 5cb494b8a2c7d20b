// Command step-ca: the smallstep CA server, built from Debian 12's packaged library
// (golang-github-smallstep-certificates-dev 0.19.0), which does not ship upstream's cmd/step-ca.
// Only what certlc's tests and local stack use: the server with the software CA service and the
// software KMS (keys in PEM files). Build it with deployments/dev/build-step-ca.sh.
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"

	// The certificate authority service and key manager ca.json needs by default.
	_ "github.com/smallstep/certificates/cas/softcas"
	_ "github.com/smallstep/certificates/kms/softkms"
)

// version is the library version this program is built against (Debian 12).
const version = "0.19.0 (certlc build from Debian sources)"

func main() {
	app := cli.NewApp()
	app.Name = "step-ca"
	app.HelpName = "step-ca"
	app.Usage = "an online certificate authority (flags go before the config path)"
	app.UsageText = "step-ca [--password-file=<file>] [--resolver=<host:port>] <ca.json>"
	app.Version = version
	app.Flags = append(app.Flags, commands.AppCommand.Flags...)
	app.Action = commands.AppCommand.Action
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
