# Sourced by the recipes in experiments/.
publish() {  # publish RUN TITLE: runs/RUN's report (written now) and its generations into docs/results/RUN
  lerplm report "runs/$1" --title "$2"
  mkdir -p "docs/results/$1"
  cp runs/"$1"/{report.md,summary.json,generations.csv.gz,*.png} "docs/results/$1/"
}
trained() {  # trained NAME: anchors/NAME and scorers/NAME from examples/NAME.toml, each trained unless it is there
  [ -d "anchors/$1" ] || lerplm train --config "examples/$1.toml" --out "anchors/$1"
  [ -d "scorers/$1" ] || lerplm scorers train --config "examples/$1.toml" --out "scorers/$1"
}
